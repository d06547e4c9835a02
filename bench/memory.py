"""Peak memory (RSS) of a worker training ResNet-56 on CIFAR-10 and of the UI server with 20 runs stored.

    python bench/memory.py [--iterations 20]

Each figure is the peak resident set of a fresh process (`ru_maxrss` of the finished child):
- worker: `python -m workbench train` of ResNet-56 on CIFAR-10 (../shared/data); reference: the textbook
  loop (torchvision transforms through a DataLoader, fp32) training the same net as many steps;
- server: `app.py` with 20 completed runs of 4,100 points each in its store, after its page was served;
  reference: a bare Gradio app with one table and one Plotly chart, imported and served the same way.
The last line is JSON: a list of {"bench", "ours", "reference", "ratio", "unit"}.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CIFAR_ARCHIVE = ROOT.parent / "shared" / "data" / "cifar-10-python.tar.gz"
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}

TEXTBOOK = textwrap.dedent("""
    import sys, tempfile, torch, torch.nn.functional as F
    from pathlib import Path
    from bench.textbook import textbook_loader
    from workbench import build_model
    from workbench.data import load_dataset
    from workbench.spec import DataSpec
    with tempfile.TemporaryDirectory() as home:
        data = load_dataset(DataSpec(name="cifar10", path=sys.argv[1]), home=Path(home))
    model = build_model("resnet56").train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    batches = iter(textbook_loader(data, 128, 2))
    for _ in range(int(sys.argv[2])):
        images, labels = next(batches)
        optimizer.zero_grad(); F.cross_entropy(model(images), labels).backward(); optimizer.step()
""")

BARE_GRADIO = textwrap.dedent("""
    import sys, gradio as gr, plotly.graph_objects as go
    with gr.Blocks() as demo:
        gr.Dataframe([[i, f"run {i}"] for i in range(20)])
        gr.Plot(go.Figure(go.Scatter(x=list(range(1000)), y=list(range(1000)))))
    demo.launch(server_port=int(sys.argv[1]), prevent_thread_lock=False)
""")


def peak_rss_mb_of(command: list[str], **kwargs) -> float:
    """Peak RSS in MiB of a child process that runs `command` to its end (Linux reports ru_maxrss in KiB)."""
    child = subprocess.Popen(command, env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, **kwargs)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])} ... failed (exit code {child.returncode})")
    return usage.ru_maxrss / 1024


def rss_mb(pid: int) -> float:
    """Peak RSS so far (VmHWM) of a running process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"no VmHWM for pid {pid}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def served_peak_mb(command: list[str], port: int, pages: list[str]) -> float:
    """Start a web server, fetch `pages` once it answers, and return its peak RSS."""
    server = subprocess.Popen(command, env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                for page in pages:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}{page}", timeout=30).read()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit(f"{command[:3]} did not serve on port {port}") from None
                time.sleep(1)
        time.sleep(2)
        return rss_mb(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=60)


def store_twenty_runs(home: Path) -> None:
    """20 completed runs with 2,000 training and 100 test points each, as a few weeks of use leave them."""
    sys.path.insert(0, str(ROOT))
    from workbench.service import open_store
    from workbench.spec import NetSpec, RunSpec

    with open_store(home) as store:
        for index in range(20):
            run_id = store.create_run(RunSpec(net=NetSpec(depth=20)), name=f"run {index}", preset="resnet20",
                                      dataset="cifar10")
            store.claim_run(run_id, "bench")
            rows = [{"iteration": i, "split": "train", "name": name, "value": 50.0 - i / 100}
                    for i in range(2000) for name in ("loss", "error")]
            rows += [{"iteration": i, "split": "test", "name": "error", "value": 40.0} for i in range(0, 2000, 20)]
            store.append_metrics(run_id, rows)
            store.transition(run_id, "completed", worker_id="bench")


def worker_figure(home: str, iterations: int) -> dict:
    worker = peak_rss_mb_of([sys.executable, "-m", "workbench", "--home", home, "train", "--preset", "resnet56",
                             "--dataset", "cifar10", "--data-dir", str(CIFAR_ARCHIVE),
                             "--iterations", str(iterations)], stderr=subprocess.DEVNULL)
    textbook = peak_rss_mb_of([sys.executable, "-c", TEXTBOOK, str(CIFAR_ARCHIVE), str(iterations)])
    print(f"worker training ResNet-56 on CIFAR-10: {worker:.0f} MiB peak; textbook loop: {textbook:.0f} MiB")
    return {"bench": "memory/worker-resnet56-cifar10", "ours": round(worker), "reference": round(textbook),
            "ratio": round(worker / textbook, 3), "unit": "MiB peak RSS"}


def server_figure(home: str) -> dict:
    store_twenty_runs(Path(home))
    port = free_port()
    server = served_peak_mb([sys.executable, "app.py", "--home", home, "--port", str(port), "--workers", "0"],
                            port, ["/", "/gradio_api/info"])
    port = free_port()
    bare = served_peak_mb([sys.executable, "-c", BARE_GRADIO, str(port)], port, ["/", "/gradio_api/info"])
    print(f"UI server with 20 runs stored: {server:.0f} MiB peak; a bare Gradio app with a table and a chart: "
          f"{bare:.0f} MiB")
    return {"bench": "memory/ui-server-20-runs", "ours": round(server), "reference": round(bare),
            "ratio": round(server / bare, 3), "unit": "MiB peak RSS"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--parts", nargs="+", choices=["worker", "server"], default=["worker", "server"])
    args = parser.parse_args()
    if not CIFAR_ARCHIVE.exists():
        sys.exit(f"CIFAR-10 archive not found at {CIFAR_ARCHIVE}; this benchmark needs ../shared/data")
    results = []
    with tempfile.TemporaryDirectory() as home:
        if "worker" in args.parts:
            results.append(worker_figure(home, args.iterations))
        if "server" in args.parts:
            results.append(server_figure(home))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
