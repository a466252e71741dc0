"""The conveyor process: settings, app assembly, HTTP ingress, health, lifecycle."""

from service.app import build_app
from service.settings import Role, SettingError, Settings, load_settings
from service.subscription_config import load_subscriptions

__all__ = ["Role", "SettingError", "Settings", "build_app", "load_settings", "load_subscriptions"]
