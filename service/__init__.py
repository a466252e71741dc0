"""The conveyor process: settings, assembly (`app`), and the packages it assembles by concern."""

from service.app import build_app
from service.settings import Role, SettingError, Settings, load_settings
from service.subscription_config import load_subscriptions

__all__ = ["Role", "SettingError", "Settings", "build_app", "load_settings", "load_subscriptions"]
