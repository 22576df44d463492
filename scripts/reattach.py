"""Collect the results of Fabric-launched jobs still running or finished on their hosts: reattach.py SWEEP_DIR."""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("sweep_dir", type=Path, help="the sweep (or run) dir the launcher wrote launch.json files to")
    parser.add_argument("--wait", action="store_true", help="wait for running jobs to finish, then collect them")
    args = parser.parse_args()
    if not args.sweep_dir.is_dir():
        print(f"error: {args.sweep_dir} is not a directory; pass the sweep dir of the launch", file=sys.stderr)
        return 2
    from hydra_plugins.fabric_launcher._reattach import reattach_sweep

    return reattach_sweep(args.sweep_dir, wait=args.wait)


if __name__ == "__main__":
    sys.exit(main())
