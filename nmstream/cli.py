"""The ``nmstream`` command.

``nmstream dev [WORKER OPTIONS]`` starts the embedded broker and a worker on this machine;
every other sub-command (``worker``, and the app's own commands) is Faust's CLI.
``--config-dir DIR`` (with ``dev`` or ``worker``) follows CR YAML files instead of a cluster.
``nmstream send-test --receiver NAME`` sends a test notification through a running worker.
``nmstream replay --topic T --from TIME`` prints (and with ``--reprocess`` re-injects) what a
topic holds in a time range; ``nmstream tap TOPIC`` follows one live. Neither needs a worker.
"""

from __future__ import annotations

import os
import sys

from nmstream.settings import SettingsError, get_settings

#: Consumer-group timings that make the embedded broker join in seconds, not half a minute.
DEV_GROUP_TIMINGS = {
    "NMSTREAM_SESSION_TIMEOUT": "6",
    "NMSTREAM_HEARTBEAT_INTERVAL": "1",
    "NMSTREAM_REBALANCE_TIMEOUT": "6",
}


def _fail(message: str) -> int:
    print(f"nmstream: {message}", file=sys.stderr)
    return 2


def _run_faust(argv: list[str]) -> int:
    """Hand ``argv`` to the Faust command line of the nmstream app."""
    try:
        settings = get_settings()
    except SettingsError as exc:
        return _fail(f"invalid settings:\n{exc}")
    # read by Faust when it is first imported (a --loop option on the command line wins)
    os.environ.setdefault("FAUST_LOOP", "uvloop" if settings.event_loop == "uvloop" else "aio")
    from nmstream.app import app

    sys.argv = ["nmstream", *argv]
    try:
        app.main()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    return 0


def dev(argv: list[str]) -> int:
    """Embedded broker on loopback, then a worker against it; Ctrl-C stops both."""
    from nmstream.broker import BrokerError, EmbeddedBroker

    try:
        settings = get_settings()
        broker = EmbeddedBroker(settings.dev_broker_port, settings.broker_bin)
        broker.start()
    except SettingsError as exc:
        return _fail(f"invalid settings:\n{exc}")
    except BrokerError as exc:
        return _fail(f"embedded broker: {exc} (NMSTREAM_DEV_BROKER_PORT=0 picks a free port)")
    print(f"nmstream: embedded broker on {broker.bootstrap}", file=sys.stderr, flush=True)
    os.environ["NMSTREAM_BROKER"] = broker.url
    for name, value in DEV_GROUP_TIMINGS.items():
        os.environ.setdefault(name, value)
    get_settings.cache_clear()
    try:
        return _run_faust(["worker", *argv])
    finally:
        broker.stop()


def send_test(argv: list[str]) -> int:
    """Ask a running worker to send a test notification through a receiver; print the outcome.

    Exit status: 0 delivered, 1 not delivered, 2 bad usage or no worker answering.
    """
    import argparse
    import json
    import urllib.error
    import urllib.request

    parser = argparse.ArgumentParser(prog="nmstream send-test", description=send_test.__doc__)
    parser.add_argument("--receiver", required=True, help="the receiver's name")
    parser.add_argument("--kind", help="its kind, e.g. WebhookReceiver, when the name is shared")
    parser.add_argument("--url", help="the worker's base URL (default: this machine's worker)")
    args = parser.parse_args(argv)
    try:
        base = args.url or f"http://127.0.0.1:{get_settings().web_port}"
    except SettingsError as exc:
        return _fail(f"invalid settings:\n{exc}")
    body = json.dumps({"receiver": args.receiver, "kind": args.kind}).encode()
    request = urllib.request.Request(f"{base.rstrip('/')}/api/v2/verify", body,
                                     {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        answer = json.loads(exc.read() or b"{}")
    except OSError as exc:
        return _fail(f"no nmstream worker answers at {base}: {exc}")
    print(json.dumps(answer, indent=2))
    return 0 if answer.get("status") == "delivered" else 1


def audit(command: str, argv: list[str]) -> int:
    """``replay`` or ``tap`` (:mod:`nmstream.audit.replay`) against the configured Kafka."""
    from kafka.errors import KafkaError

    from nmstream.audit import replay

    try:
        settings = get_settings()
        run = replay.replay if command == "replay" else replay.tap
        return run(argv, settings)
    except SettingsError as exc:
        return _fail(f"invalid settings:\n{exc}")
    except replay.UsageError as exc:
        return _fail(str(exc))
    except KafkaError as exc:
        return _fail(f"Kafka at {';'.join(get_settings().bootstrap_servers)}: {exc!r}")


def _take_config_dir(args: list[str]) -> list[str]:
    """Remove ``--config-dir DIR`` from ``args`` into ``NMSTREAM_CONFIG_DIR``."""
    rest: list[str] = []
    it = iter(args)
    for arg in it:
        if arg == "--config-dir":
            value = next(it, "")
        elif arg.startswith("--config-dir="):
            value = arg.partition("=")[2]
        else:
            rest.append(arg)
            continue
        if not os.path.isdir(value):
            raise SettingsError(f"--config-dir: {value!r} is not a directory")
        os.environ["NMSTREAM_CONFIG_DIR"] = os.path.abspath(value)
        get_settings.cache_clear()
    return rest


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point."""
    try:
        args = _take_config_dir(sys.argv[1:] if argv is None else argv)
    except SettingsError as exc:
        return _fail(str(exc))
    if args[:1] == ["dev"]:
        return dev(args[1:])
    if args[:1] == ["send-test"]:
        return send_test(args[1:])
    if args[:1] in (["replay"], ["tap"]):
        return audit(args[0], args[1:])
    return _run_faust(args)
