"""TLS to the broker (amqps://) end to end, through a TLS-terminating proxy in front of the
shared broker (its own TLS listener would need a broker restart): our CA, a client certificate
the broker requires, a wrong CA and a wrong hostname each refused with a readable problem."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from yarl import URL

from service import SettingError, load_settings
from tests.conftest import Running, StartConveyor, subscription
from tests.support.ledger import Account, Ledger
from tests.support.proxy import FaultProxy
from tests.support.tls import Certificates, make_certificates
from tests.support.waiting import eventually

# /readyz shows why the broker is not connected only to an admin.
ADMIN_TOKEN = "tls-admin-token-0123456789"
READING_THE_PROBLEM = {"admin_tokens": (("ops", ADMIN_TOKEN),)}

TlsBroker = Callable[..., Awaitable[FaultProxy]]


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture
async def tls_broker(amqp_url: str, certificates: Certificates) -> AsyncIterator[TlsBroker]:
    """The shared broker behind a TLS listener (a proxy that terminates TLS)."""
    started: list[FaultProxy] = []
    target = URL(amqp_url)

    async def start(*, require_client_cert: bool = False) -> FaultProxy:
        context = certificates.server_context(require_client_cert=require_client_cert)
        proxy = FaultProxy(target.host or "127.0.0.1", target.port or 5672, tls=context)
        await proxy.start()
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        await proxy.stop()


def amqps(port: int, host: str = "localhost") -> str:
    return f"amqps://guest:guest@{host}:{port}/"


async def broker_problem(conveyor: Running) -> str:
    """What /readyz tells an admin about the broker once it has tried (and failed) to connect."""
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    async def tried() -> bool:
        body = await (await conveyor.client.get("/readyz", headers=admin)).json()
        state: str = body["checks"]["broker"]
        return state != "not connected: connecting"

    await eventually(tried, timeout=15, what="a connection attempt")
    response = await conveyor.client.get("/readyz", headers=admin)
    assert response.status == 503
    problem: str = (await response.json())["checks"]["broker"]
    return problem


async def test_amqps_with_our_ca_carries_events_end_to_end(
    start_conveyor: StartConveyor,
    tls_broker: TlsBroker,
    certificates: Certificates,
    accounts: list[Account],
) -> None:
    ledger = Ledger("TLS to the broker (300 events)")
    proxy = await tls_broker()
    conveyor = await start_conveyor(
        (subscription("secure", ("chaos.*",), ledger.handler(), concurrency=16),),
        amqp_url_override=amqps(proxy.port),
        amqp_ca_file=certificates.ca,
    )
    await ledger.send(conveyor, 300, concurrency=16)
    await ledger.settled()
    account = ledger.account()
    accounts.append(account)

    assert proxy.open_links == 1  # everything went through the TLS listener
    assert (account.accepted, account.handled) == (300, 300)
    assert (account.lost, account.unexpected, account.duplicated) == (0, 0, 0)


async def test_a_client_certificate_the_broker_requires_is_presented(
    start_conveyor: StartConveyor, tls_broker: TlsBroker, certificates: Certificates
) -> None:
    ledger = Ledger("client certificate")
    proxy = await tls_broker(require_client_cert=True)
    without = await start_conveyor(
        amqp_url_override=amqps(proxy.port),
        amqp_ca_file=certificates.ca,
        wait_ready=False,
        **READING_THE_PROBLEM,
    )
    assert "not connected" in await broker_problem(without)

    conveyor = await start_conveyor(
        (subscription("mutual", ("chaos.*",), ledger.handler()),),
        amqp_url_override=amqps(proxy.port),
        amqp_ca_file=certificates.ca,
        amqp_cert_file=certificates.client_cert,
        amqp_key_file=certificates.client_key,
    )
    await ledger.send(conveyor, 20, concurrency=4)
    await ledger.settled()
    assert ledger.account().handled == 20
    assert proxy.open_links == 1  # only the process with the certificate got through


async def test_a_broker_certificate_from_another_ca_is_refused(
    start_conveyor: StartConveyor, tls_broker: TlsBroker, certificates: Certificates
) -> None:
    proxy = await tls_broker()
    conveyor = await start_conveyor(
        amqp_url_override=amqps(proxy.port),
        amqp_ca_file=certificates.other_ca,
        wait_ready=False,
        **READING_THE_PROBLEM,
    )
    problem = await broker_problem(conveyor)
    assert "CERTIFICATE_VERIFY_FAILED" in problem
    assert proxy.open_links == 0


async def test_the_hostname_is_checked_unless_turned_off(
    start_conveyor: StartConveyor, tls_broker: TlsBroker, certificates: Certificates
) -> None:
    proxy = await tls_broker()
    # The certificate names localhost, not 127.0.0.1.
    checked = await start_conveyor(
        amqp_url_override=amqps(proxy.port, host="127.0.0.1"),
        amqp_ca_file=certificates.ca,
        wait_ready=False,
        **READING_THE_PROBLEM,
    )
    assert "mismatch" in await broker_problem(checked)

    unchecked = await start_conveyor(
        amqp_url_override=amqps(proxy.port, host="127.0.0.1"),
        amqp_ca_file=certificates.ca,
        amqp_verify_hostname=False,
    )
    assert (await unchecked.client.get("/readyz")).status == 200


def test_a_certificate_with_a_key_that_does_not_match_is_named_at_start(
    certificates: Certificates,
) -> None:
    with pytest.raises(SettingError) as raised:
        load_settings(
            {
                "CONVEYOR_AMQP_URL": amqps(5671),
                "CONVEYOR_AMQP_CA_FILE": str(certificates.ca),
                "CONVEYOR_AMQP_CERT_FILE": str(certificates.client_cert),
                "CONVEYOR_AMQP_KEY_FILE": str(certificates.server_key),
            }
        )
    assert raised.value.name == "CONVEYOR_AMQP_CERT_FILE"


def test_good_tls_files_load(certificates: Certificates, tmp_path: Path) -> None:
    settings = load_settings(
        {
            "CONVEYOR_AMQP_URL": amqps(5671),
            "CONVEYOR_AMQP_CA_FILE": str(certificates.ca),
            "CONVEYOR_AMQP_CERT_FILE": str(certificates.client_cert),
            "CONVEYOR_AMQP_KEY_FILE": str(certificates.client_key),
        }
    )
    assert settings.amqp_tls_context() is not None
