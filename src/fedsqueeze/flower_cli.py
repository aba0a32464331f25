"""`fedsqueeze flower ...`: start a SuperLink or a SuperNode, make keys, submit a run (docs/DEPLOY.md).

Thin wrappers over Flower's own commands (runtime/flower/deploy.py builds the argv): each keeps
Flower's state under --home, turns off usage reporting, and never installs packages at run time.
Mounted in cli.py with `app.add_typer(flower_app, name="flower")`.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import typer

flower_app = typer.Typer(no_args_is_help=True, help="Run on a Flower deployment (SuperLink + SuperNodes).")

HOME = typer.Option(Path("runs/flwr-home"), "--home", help="Flower's state (FLWR_HOME) for this machine.")


def _exec(cmd: list[str], home: Path) -> None:
    """Replaces this process with Flower's, so signals (Ctrl-C, kill) reach it directly."""
    from .runtime.flower.deploy import flower_env

    home.mkdir(parents=True, exist_ok=True)
    typer.echo(" ".join(cmd), err=True)
    os.execvpe(cmd[0], cmd, flower_env(home))


def _tls(tls_dir: Path | None):
    from .runtime.flower.deploy import Tls

    if tls_dir is None:
        return None
    tls = Tls(tls_dir / "ca.crt", tls_dir / "server.pem", tls_dir / "server.key")
    missing = [str(p) for p in (tls.ca, tls.cert, tls.key) if not p.is_file()]
    if missing:
        raise typer.BadParameter(f"missing {', '.join(missing)} (make them with `fedsqueeze flower keys`)")
    return tls


@flower_app.command()
def superlink(
    port: int = typer.Option(9093, help="The SuperLink's one HTTP port (Fleet, Control, ServerApp APIs)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0: every interface)."),
    tls_dir: Path | None = typer.Option(
        None, "--tls", help="Folder with ca.crt, server.pem, server.key; without it the SuperLink runs --insecure."
    ),
    auth: bool = typer.Option(False, "--auth", help="Only registered SuperNodes may connect."),
    database: Path | None = typer.Option(
        None,
        "--database",
        help="SQLite file for the SuperLink's state: SuperNodes then keep their ids across a SuperLink restart "
        "(without it the state is in memory and every SuperNode has to start again).",
    ),
    home: Path = HOME,
):
    """Start a SuperLink (runs the ServerApp of each `flwr run`)."""
    from .runtime.flower.deploy import superlink_command

    _exec(superlink_command(port, host, _tls(tls_dir), auth, database), home)


@flower_app.command()
def supernode(
    superlink_address: str = typer.Option(..., "--superlink", help="SuperLink as HOST:PORT."),
    partition_id: int | None = typer.Option(None, "--partition-id", help="Which client of the federation this is."),
    num_partitions: int | None = typer.Option(None, "--num-partitions", help="Clients in the federation."),
    data: Path | None = typer.Option(
        None,
        "--data",
        help="This owner's own data file (per-owner data, data.source = owners:DIR): the node reads it and "
        "no other; its owner is the file's stem. Instead of --partition-id / --num-partitions.",
    ),
    port: int = typer.Option(9094, help="This SuperNode's local ClientApp API port (one per SuperNode)."),
    root_cert: Path | None = typer.Option(
        None, "--root-cert", help="CA that signed the SuperLink's certificate; without it the connection is --insecure."
    ),
    auth_key: Path | None = typer.Option(
        None, "--auth-key", help="This SuperNode's private key (registered with `fedsqueeze flower register`)."
    ),
    restart: bool = typer.Option(
        True,
        "--restart/--no-restart",
        help="Start the SuperNode again, with back-off, whenever it stops by itself (after a SuperLink restart "
        "Flower's exits 0); stop it with Ctrl-C or SIGTERM to this command.",
    ),
    resident: bool = typer.Option(
        True,
        "--resident/--no-resident",
        help="Keep the model loaded across rounds in a resident worker beside the SuperNode (restarted if it "
        "dies); --no-resident: every message loads it in a fresh ClientApp process, as Flower does.",
    ),
    home: Path = HOME,
):
    """Start a SuperNode holding one owner's own file (--data) or one partition of a shared source."""
    from .runtime.flower.deploy import flower_env, supernode_command, supervise

    data = _node_data(data, partition_id, num_partitions)
    # resident worker (docs/DEPLOY.md): its directory goes to the ClientApps in the node config
    worker_dir = None
    if resident:
        from .runtime.flower.supervisor import node_dir

        worker_dir = node_dir(home, port)
    cmd = supernode_command(
        superlink_address,
        partition_id,
        num_partitions,
        port,
        root_cert=root_cert,
        auth_key=auth_key,
        resident=worker_dir,
        data=data,
    )
    if not restart and worker_dir is None:
        _exec(cmd, home)
    home.mkdir(parents=True, exist_ok=True)
    env, say = flower_env(home), lambda text: typer.echo(text, err=True)
    worker = None
    if worker_dir is not None:
        from .runtime.flower.supervisor import ResidentWorker

        worker = ResidentWorker(worker_dir, env, log=say).start()
    typer.echo(" ".join(cmd), err=True)
    try:
        code = supervise(cmd, env, log=say, max_restarts=None if restart else 0)
    finally:
        if worker is not None:
            worker.stop()
    raise typer.Exit(code)


def _node_data(data: Path | None, partition_id: int | None, num_partitions: int | None) -> Path | None:
    """--data FILE (an existing file, made absolute) or both partition options; never both kinds."""
    if data is not None:
        if partition_id is not None or num_partitions is not None:
            raise typer.BadParameter("--data names the owner's own file: leave out --partition-id / --num-partitions")
        if not data.expanduser().is_file():
            raise typer.BadParameter(f"--data {data}: file not found")
        return data.expanduser().resolve()
    if partition_id is None or num_partitions is None:
        raise typer.BadParameter("give --data FILE (this owner's own file) or both --partition-id and --num-partitions")
    return None


@flower_app.command()
def keys(
    folder: Path = typer.Argument(..., help="Where to write the files."),
    host: list[str] = typer.Option(
        ["127.0.0.1", "localhost"], "--host", help="Name or IP SuperNodes use to reach the SuperLink (repeatable)."
    ),
    supernodes: int = typer.Option(0, help="Also make this many SuperNode key pairs (supernode-I, .pub)."),
):
    """TLS files (a private CA + the SuperLink's certificate) and SuperNode authentication keys."""
    from .runtime.flower.certs import make_supernode_key, make_tls

    tls = make_tls(folder, list(host))
    typer.echo(f"SuperLink: {tls.cert}, {tls.key}; everyone trusts {tls.ca}")
    for i in range(supernodes):
        private, public = make_supernode_key(folder, f"supernode-{i}")
        typer.echo(f"SuperNode {i}: keep {private} on its machine; register {public}")


@flower_app.command()
def register(
    public_key: Path = typer.Argument(..., help="A SuperNode's public key (supernode-I.pub)."),
    superlink_address: str = typer.Option(..., "--superlink", help="SuperLink as HOST:PORT."),
    root_cert: Path | None = typer.Option(None, "--root-cert", help="CA of the SuperLink's certificate."),
    home: Path = HOME,
):
    """Allow a SuperNode to join a SuperLink started with --auth."""
    from .runtime.flower.deploy import flower_env, register_command, write_connection

    write_connection(home, superlink_address, root_cert)
    raise typer.Exit(subprocess.call(register_command(public_key), env=flower_env(home)))


@flower_app.command("run")
def run_(
    config: Path = typer.Argument(..., help="fedsqueeze TOML config."),
    superlink_address: str = typer.Option(..., "--superlink", help="SuperLink as HOST:PORT."),
    out: Path = typer.Option(..., "--out", help="Run directory, on the SuperLink's machine."),
    set_: list[str] = typer.Option([], "--set", help="Override a key, e.g. --set train.rounds=2 (repeatable)."),
    root_cert: Path | None = typer.Option(None, "--root-cert", help="CA of the SuperLink's certificate."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run directory."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its checkpoint."),
    home: Path = HOME,
):
    """Submit a run to a SuperLink (`flwr run` with this config) and stream its log until it ends."""
    from . import config as config_mod
    from .errors import UserError
    from .runtime.flower.deploy import flower_env, submit, write_connection, write_run_config

    try:
        cfg = config_mod.load(config, set_)
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    write_connection(home, superlink_address, root_cert)
    run_config = write_run_config(home / "run-config.toml", cfg.to_toml(), out, overwrite, resume)
    raise typer.Exit(submit(run_config, flower_env(home)))
