"""Grad-CAM heatmaps (Selvaraju et al., 2017) for any DermEdge model.

    python -m train.gradcam runs/<run> --n 8          # -> runs/<run>/eval/gradcam/

The model is cut at a target layer into ``features`` (input -> activations A) and
``head`` (A -> pre-softmax class scores). The heatmap of class c is
``ReLU(sum_k mean_xy(d score_c / d A_k) * A_k)``, resized to the input and scaled to
[0, 1]. The default target is the last convolution whose output is still wider than
1x1 pixel. The CLI writes an image | overlay panel for the most confident correct and
the most confident wrong predictions of a split, explaining the predicted class.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import cv2
import keras
import numpy as np
from keras import layers

from device.preprocess import normalize
from train import data as ds
from train import plots
from train.dataset import predict_probs
from train.evaluate import eval_dir, load_run
from train.run import CHECKPOINTS

_log = logging.getLogger(__name__)

CONV_TYPES = (layers.Conv2D, layers.DepthwiseConv2D, layers.SeparableConv2D)


def find_target_layer(model: keras.Model) -> str:
    """Name of the last convolution whose output is larger than 1x1."""
    for layer in reversed(model.layers):
        if isinstance(layer, CONV_TYPES):
            _, h, w, _ = layer.output.shape
            if h * w > 1:
                return layer.name
    raise ValueError(f"model {model.name!r} has no convolution with a spatial output larger than 1x1")


def _score_tensor(model: keras.Model):
    """Pre-softmax scores: gradients through a saturated softmax vanish, so Grad-CAM uses logits."""
    last = model.layers[-1]
    return last.input if isinstance(last, layers.Softmax) else model.output


def _score_gradients(head: keras.Model, activations: np.ndarray, class_index: int) -> np.ndarray:
    """d head(A)[:, class_index] / d A, as numpy.

    The only backend-specific code in train/: Keras 3 has no backend-neutral gradient
    call. It serves this evaluation tool, never the training loop (which uses
    ``model.fit`` on any backend).
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        a = tf.convert_to_tensor(activations)
        with tf.GradientTape() as tape:
            tape.watch(a)
            score = tf.reduce_sum(head(a, training=False)[:, class_index])
        return tape.gradient(score, a).numpy()
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        def score(a):
            return jnp.sum(head(a, training=False)[:, class_index])

        return np.asarray(jax.grad(score)(jnp.asarray(activations)))
    raise NotImplementedError(f"Grad-CAM supports the tensorflow and jax backends, not {backend!r}")


class GradCAM:
    """Grad-CAM of one model at one layer; build once, call per image."""

    def __init__(self, model: keras.Model, layer_name: str | None = None):
        self.layer_name = layer_name or find_target_layer(model)
        try:
            target = model.get_layer(self.layer_name)
        except ValueError as err:
            raise ValueError(f"layer {self.layer_name!r} not in model {model.name!r}") from err
        if len(target.output.shape) != 4:
            raise ValueError(f"layer {self.layer_name!r} output {target.output.shape} is not a feature map")
        self.features = keras.Model(model.input, target.output)
        try:
            self.head = keras.Model(target.output, _score_tensor(model))
        except ValueError as err:
            # A skip connection around the layer means the scores are not a function of its output alone.
            raise ValueError(f"layer {self.layer_name!r} does not separate the model's input from its "
                             "output (a skip connection bypasses it); choose a layer outside a residual "
                             "block") from err
        self.num_classes = int(model.output.shape[-1])

    def __call__(self, x: np.ndarray, class_index: int) -> np.ndarray:
        """Heatmap (H, W) in [0, 1] for a normalized input image ``x`` (H, W, 3)."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 3:
            raise ValueError(f"expected one normalized image (H, W, 3), got shape {x.shape}")
        if not 0 <= class_index < self.num_classes:
            raise ValueError(f"class_index {class_index} outside 0..{self.num_classes - 1}")
        acts = keras.ops.convert_to_numpy(self.features(x[None], training=False))
        grads = _score_gradients(self.head, acts, class_index)
        weights = grads[0].mean(axis=(0, 1))
        cam = np.maximum(acts[0] @ weights, 0.0).astype(np.float32)
        cam = cv2.resize(cam, (x.shape[1], x.shape[0]), interpolation=cv2.INTER_LINEAR)
        peak = cam.max()
        return np.clip(cam / peak, 0.0, 1.0) if peak > 0 else np.zeros_like(cam)


def gradcam(model: keras.Model, x: np.ndarray, class_index: int, layer_name: str | None = None) -> np.ndarray:
    """Grad-CAM heatmap (H, W) in [0, 1] of ``class_index`` for one normalized image ``x``."""
    return GradCAM(model, layer_name)(x, class_index)


def overlay_heatmap(rgb: np.ndarray, heatmap: np.ndarray, *, alpha: float = 0.45) -> np.ndarray:
    """Blend a [0, 1] heatmap (any size, JET colours) over an RGB uint8 image."""
    h, w = rgb.shape[:2]
    if heatmap.shape != (h, w):
        heatmap = cv2.resize(heatmap.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    heat_u8 = np.clip(np.rint(heatmap * 255), 0, 255).astype(np.uint8)
    colour = cv2.cvtColor(cv2.applyColorMap(heat_u8, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    blend = (1 - alpha) * rgb.astype(np.float32) + alpha * colour.astype(np.float32)
    return np.clip(np.rint(blend), 0, 255).astype(np.uint8)


def write_examples(run_dir: Path, *, n: int = 8, split: str = "test", checkpoint: str = "best",
                   layer_name: str | None = None, data: Path | None = None) -> list[Path]:
    """Panels for the ``n`` most confident correct and ``n`` most confident wrong predictions."""
    run = load_run(run_dir, split=split, checkpoint=checkpoint, data=data)
    probs = predict_probs(run.model, run.pixels, *run.norm)
    pred, conf = probs.argmax(axis=1), probs.max(axis=1)
    cam = GradCAM(run.model, layer_name)
    out = eval_dir(run.run_dir, split=split, checkpoint=checkpoint) / "gradcam"
    out.mkdir(parents=True, exist_ok=True)
    for stale in [*out.glob("correct_*.png"), *out.glob("wrong_*.png")]:
        stale.unlink()
    written = []
    for kind, mask in (("correct", pred == run.labels), ("wrong", pred != run.labels)):
        chosen = [i for i in np.argsort(-conf, kind="stable") if mask[i]][:n]
        for rank, i in enumerate(chosen, start=1):
            rgb = np.asarray(run.pixels[i])
            heat = cam(normalize(rgb, *run.norm), int(pred[i]))
            true_code, pred_code = ds.CLASS_CODES[run.labels[i]], ds.CLASS_CODES[pred[i]]
            name = f"{kind}_{rank:02d}_{run.records[i].image_id}_true-{true_code}_pred-{pred_code}.png"
            title = f"{run.records[i].image_id}: true {true_code}, predicted {pred_code} ({conf[i]:.0%})"
            captions = ("input", f"Grad-CAM of {pred_code} at {cam.layer_name}")
            written.append(plots.plot_image_pair(rgb, overlay_heatmap(rgb, heat), out / name, title=title,
                                                 captions=captions))
    _log.info("wrote %d Grad-CAM panels to %s", len(written), out)
    return written


def main(argv=None) -> list[Path]:
    parser = argparse.ArgumentParser(prog="python -m train.gradcam", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="training run directory")
    parser.add_argument("--n", type=int, default=8, help="panels per kind (correct, wrong)")
    parser.add_argument("--split", choices=ds.SPLITS, default="test")
    parser.add_argument("--checkpoint", choices=CHECKPOINTS, default="best")
    parser.add_argument("--layer", help="target layer name (default: last conv larger than 1x1)")
    parser.add_argument("--data", type=Path, help="HAM10000 root, if not where the run was trained")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    written = write_examples(args.run_dir, n=args.n, split=args.split, checkpoint=args.checkpoint,
                             layer_name=args.layer, data=args.data)
    print(f"{len(written)} panels in {written[0].parent if written else args.run_dir}")
    return written


if __name__ == "__main__":
    main()
