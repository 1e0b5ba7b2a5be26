"""install, uninstall: plug pellucid into Docker, containerd, CRI-O or podman, or take it out."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..cli import Args
    from ..install.files import Outcome

AFTER = {
    "docker": "dockerd reads it on SIGHUP: run again with --reload, or `systemctl reload docker`",
    "containerd": "restart containerd to apply it (`systemctl restart containerd`)",
    "crio": "CRI-O reloads runtime handlers on SIGHUP (`systemctl reload crio`)",
    "podman": "podman reads it at its next command",
}


def _report(outcome: Outcome, dry_run: bool, client: str) -> None:
    if not outcome.changed:
        print(f"{outcome.path}: already as wanted, nothing changed")
        return
    if dry_run:
        print(outcome.diff, end="")
        print(f"(dry run: {outcome.path} not changed)")
        return
    verb = "removed" if outcome.removed else "written"
    print(f"{outcome.path}: {verb}" + (f" (previous content in {outcome.backup})" if outcome.backup else ""))
    print(AFTER[client])


def install(args: Args) -> int:
    from .. import config
    from ..install import clients, containerd, docker, files, runtimeclass
    _check_reload(args)
    outcome = clients.install(args.client, args.target_config, args.runtime_path, args.default, args.dry_run)
    _report(outcome, args.dry_run, args.client)
    if args.client == "containerd":
        for warning in containerd.warnings(files.read(outcome.path)):
            print(f"warning: {warning}")
    if args.client in ("containerd", "crio"):
        cfg = config.load(args.config)
        tcg, why = runtimeclass.uses_tcg(cfg)
        cpu, memory = runtimeclass.overhead(cfg, tcg)
        print("\nKubernetes RuntimeClass for this handler (kubectl apply -f -):")
        print(runtimeclass.manifest(cpu, memory, f"overhead: {cfg.hypervisor.vcpus} base vCPU(s), "
                                                 f"{cfg.hypervisor.memory_mib} MiB base guest RAM; {why}"), end="")
    if args.reload and not args.dry_run:
        _reload(args.client, docker)
    return 0


def uninstall(args: Args) -> int:
    from ..install import clients, docker
    _check_reload(args)
    outcome = clients.uninstall(args.client, args.target_config, args.dry_run)
    _report(outcome, args.dry_run, args.client)
    if args.reload and not args.dry_run:
        _reload(args.client, docker)
    return 0


def _check_reload(args: Args) -> None:
    """Refused before any file is touched."""
    from ..install import InstallError
    if args.reload and args.client != "docker":
        raise InstallError(f"--reload is for docker only; for {args.client}: {AFTER.get(args.client, '')}")


def _reload(client: str, docker) -> None:
    pids = docker.reload()
    print(f"dockerd (pid {', '.join(map(str, pids))}) told to reload (SIGHUP)" if pids else "no dockerd running")
