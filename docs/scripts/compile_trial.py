"""The torch.compile trial of issue 12 (docs/benchmarks.md): oat's training loop with the network's
tensor work (normalise, features, head) compiled, against the same loop eager, on the CPU.

Run from the repository root after adding to ``oat.network.LambdaNetwork`` the method the trial
compiled (it was not kept: compiled was slower)::

    def body(self, x, cond):
        x = (x - self.mean) / self.std
        return self.forward_head(self.forward_features(x, cond), cond)

with ``forward`` ending in ``return self.body(x, cond)``; then ``python docs/scripts/compile_trial.py``.
"""
import sys, statistics, tempfile, torch, numpy as np
from pathlib import Path
sys.path.insert(0, "bench")
from step import config_for, floor_epoch
from _timing import timed
from oat.config import from_dict
from oat.distributed import DistEnv
from oat.progress import Progress
from oat.experiment import build
from oat.trainer import setup_training, train_one_epoch
torch.set_num_threads(2)
steps = 10
with tempfile.TemporaryDirectory() as tmp:
    g = np.random.default_rng(0); data = Path(tmp) / "images.npz"
    np.savez(data, x=g.integers(0, 256, (2*128*steps, 28, 28, 1), dtype=np.uint8), y=g.integers(0, 10, 2*128*steps))
    for conditioned in (True, False):
        runs = {}
        for name in ("eager", "compiled"):
            run = setup_training(build(from_dict(config_for("small_cnn", conditioned, data, torch.device("cpu"), steps))), Path(tmp)/f"{name}{conditioned}", None, torch.device("cpu"), DistEnv())
            if name == "compiled":
                run.model.body = torch.compile(run.model.body)
            runs[name] = run
        q = Progress(1, enabled=False)
        t = {n: [] for n in runs}
        for n, r in runs.items():
            import time; s = time.perf_counter(); train_one_epoch(r, 0, q); print(n, "warm-up", f"{time.perf_counter()-s:.1f}s", flush=True)
        for e in range(1, 5):
            for n, r in runs.items():
                t[n].append(timed(lambda: train_one_epoch(r, e, q), torch.device("cpu")) / steps)
        m = {n: statistics.median(v) for n, v in t.items()}
        print("conditioned" if conditioned else "dedicated", {n: f"{v*1000:.0f} ms" for n, v in m.items()}, f"ratio compiled/eager {m['compiled']/m['eager']:.3f}", flush=True)
