"""Inception FID, the paper's FID: torchmetrics' ``FrechetInceptionDistance`` (2048-d pool features of
the FID Inception-v3) with its weights read from a local file, ``Settings.inception_path``
(``G2I_INCEPTION_PATH``). Nothing is downloaded: without the file, evaluation stops with an error that
names the setting.

The file is the FID Inception-v3 state dict torch-fidelity distributes (``pt_inception-2015-12-05-*.pth``)
or the same tensors as ``.safetensors``. A ``.pth`` is read with ``torch.load(weights_only=True)`` (plain
tensors only, no code); torch-fidelity's own loader unpickles, so it only ever sees a copy re-written
here from those tensors.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from g2i_core.evaluate.metrics import Estimate, bootstrap_set, frechet_distance

KIND = "inception"
SETTING = "G2I_INCEPTION_PATH"


def check_inception_path(path: str) -> Path:
    """The weights file, or a FileNotFoundError naming the setting."""
    if not path:
        raise FileNotFoundError(f"Inception FID needs the FID Inception-v3 weights as a local file: set {SETTING} "
                                f"(or inception_path in g2i.toml) to pt_inception-2015-12-05-6726825d.pth or a "
                                f".safetensors copy; weights are never downloaded")
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{SETTING}={path!r} is not a file (the FID Inception-v3 weights, "
                                f"pt_inception-2015-12-05-6726825d.pth or .safetensors)")
    return p


def load_inception_state(path: Path) -> dict:
    """The weights as a dict of tensors, without unpickling anything but tensors."""
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"{path} is not a state dict of tensors (expected the FID Inception-v3 weights)")
    return state


@dataclass
class InceptionFID:
    """The ``inception_fid`` metric, used like an evaluation encoder (``--encoders inception``)."""

    path: str
    device: str = "cpu"
    batch_size: int = 32
    kind: str = KIND

    @property
    def name(self) -> str:
        return f"inception:{Path(self.path).name}"

    def metric(self):
        """A fresh torchmetrics FrechetInceptionDistance on the FID Inception-v3 (2048 pool features) with
        the local weights; ``metric().inception.rows`` records the features it computes."""
        import torch
        from torchmetrics.image.fid import FrechetInceptionDistance, NoTrainInceptionV3

        state = load_inception_state(check_inception_path(self.path))
        with tempfile.TemporaryDirectory(prefix="g2i-inception-") as tmp:
            copy = Path(tmp) / "inception.pth"
            torch.save(state, copy)  # plain tensors written here: the only file torch-fidelity unpickles
            net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                     feature_extractor_weights_path=str(copy))

        class Recording(torch.nn.Module):
            """The network as torchmetrics' feature model, keeping each batch's features (the bootstrap
            then needs no second pass)."""

            num_features = 2048

            def __init__(self):
                super().__init__()
                self.net = net
                self.rows: list[np.ndarray] = []

            def forward(self, x):
                out = self.net(x)
                self.rows.append(out.detach().double().cpu().numpy())
                return out

        return FrechetInceptionDistance(feature=Recording(), reset_real_features=True).to(self.device)

    def metrics(self, gen: np.ndarray, real: np.ndarray, *, seed: int = 0) -> dict[str, Estimate]:
        """``inception_fid``: torchmetrics' value on all nodes, with a bootstrap interval over nodes from
        the features of the same pass."""
        import torch

        fid = self.metric()
        to_t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).to(self.device)  # noqa: E731
        feats = {}
        for name, images in (("real", real), ("gen", gen)):
            fid.inception.rows = []
            for i in range(0, len(images), self.batch_size):
                fid.update(to_t(images[i:i + self.batch_size]), real=name == "real")
            feats[name] = np.concatenate(fid.inception.rows)
        point = float(fid.compute())
        boot = bootstrap_set(lambda i: frechet_distance(feats["gen"][i], feats["real"][i]), len(gen), seed=seed)
        shift = point - boot.mean  # torchmetrics (float64 sums) and numpy agree to rounding; keep its value
        return {"inception_fid": Estimate(point, max(boot.lo + shift, 0.0), max(boot.hi + shift, 0.0), boot.n)}
