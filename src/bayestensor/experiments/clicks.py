"""The clicks task (DLRM): streaming binary classification with BCE, AUC, throughput and table compression."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import KAGGLE_ROWS, ClickBatch, SyntheticClicks, split_bounds
from ..inference import ARD, sampling
from ..layers import TensorizedEmbedding
from .auc import binary_accuracy, binary_log_loss, roc_auc
from .config import RunConfig
from .distributed import DistContext, gather_objects
from .progress import Console
from .registry import Experiment
from .run_state import peak_rss_mb
from .step import optimizer_step


class ClicksTask:
    """Binary click prediction on streams of :class:`~bayestensor.data.ClickBatch`.

    The loss of a batch is the mean BCE of the click logits plus ``β · prior_loss / N`` with ``N``
    the training rows per epoch (all processes). For synthetic clicks, which stand in for Criteo
    Kaggle, ``N`` is the 39,291,958 rows of the Kaggle training split: the prior then has the
    strength it would have on the real data. (With ``N`` the few hundred thousand rows of a short
    synthetic epoch, the prior outweighs the weak per-entry data gradient of the big tables' cores
    by 10-100x and shrinks whole tables to zero; ``report.json`` flags such collapsed layers.)
    Test metrics: ROC AUC (a rank statistic, no scikit-learn), accuracy at logit 0 and log loss,
    over the whole test stream on every process.
    """

    def __init__(self, exp: Experiment, cfg: RunConfig, ctx: DistContext, device: torch.device) -> None:
        self.cfg, self.ctx, self.device = cfg, ctx, device
        self.train, self.test, self.validation = exp.load_data(cfg)
        if isinstance(self.train.source, SyntheticClicks):
            self.num_train = split_bounds(KAGGLE_ROWS, "train")[1]
        else:
            self.num_train = len(self.train) * self.train.batch_size * ctx.world_size
        self.samples_per_second: list[float] = []

    def _move(self, batch: ClickBatch) -> ClickBatch:
        return ClickBatch(*(t.to(self.device, non_blocking=True) for t in batch))

    def objective(self, net: nn.Module, ard: ARD) -> Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]:
        """The batch objective ``(dense, sparse, label) -> (BCE + β · prior_loss / N, prior_loss)``."""
        return lambda dense, sparse, label: ard.objective(F.binary_cross_entropy_with_logits(net(dense, sparse), label))

    def train_epoch(
        self,
        net: nn.Module,
        objective: Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]],
        optimizer: torch.optim.Optimizer,
        epoch: int,
        console: Console,
    ) -> dict[str, float]:
        """One epoch of this process's batches; also measures training throughput (all processes)."""
        net.train()
        total, total_prior, batches, rows = 0.0, 0.0, 0, 0
        t0 = time.perf_counter()
        with console.progress(len(self.train), f"epoch {epoch + 1}") as advance:
            for batch in self.train.epoch(epoch):
                dense, sparse, label = self._move(batch)
                loss, reg = optimizer_step(*objective(dense, sparse, label), optimizer)
                total, total_prior = total + loss, total_prior + reg
                batches += 1
                rows += label.shape[0]
                advance()
        rate = rows * self.ctx.world_size / max(time.perf_counter() - t0, 1e-9)
        self.samples_per_second.append(rate)
        return {
            "train_loss": total / max(batches, 1),
            "prior_loss": total_prior / max(batches, 1),
            "samples_per_second": rate,
        }

    @torch.no_grad()
    def _scores(self, model: nn.Module, batches: Iterable[ClickBatch], num_samples: int = 1):
        model.eval()
        logits, labels = [], []
        for batch in batches:
            dense, sparse, label = self._move(batch)
            if num_samples > 1:
                with sampling(model):
                    p = torch.stack([torch.sigmoid(model(dense, sparse)) for _ in range(num_samples)]).mean(0)
                out = torch.logit(p.clamp(1e-7, 1 - 1e-7))
            else:
                out = model(dense, sparse)
            logits.append(out.float().cpu())
            labels.append(label.cpu())
        return torch.cat(logits), torch.cat(labels)

    def validation_loss(self, model: nn.Module) -> float:
        """Mean BCE of the posterior mean on the held-out ``data.validation`` rows (same on every process)."""
        logits, labels = self._scores(model, self.validation)
        model.train()
        return binary_log_loss(logits, labels)

    def epoch_metrics(self, model: nn.Module) -> dict[str, float]:
        """Test AUC, accuracy and log loss of the posterior mean."""
        return self.final_metrics(model, 1)

    def final_metrics(self, model: nn.Module, num_samples: int) -> dict[str, Any]:
        """Test AUC, accuracy and log loss (posterior-predictive with ``num_samples > 1``)."""
        logits, labels = self._scores(model, self.test, num_samples)
        return {
            "test_accuracy": binary_accuracy(logits, labels),
            "test_auc": roc_auc(logits, labels),
            "test_logloss": binary_log_loss(logits, labels),
            "test_rows": int(labels.numel()),
        }

    def report_extras(self, model: nn.Module, history: list[dict[str, Any]]) -> dict[str, Any]:
        """Throughput, the teacher's AUC (synthetic data) and the tensorized tables' sizes."""
        tables = {}
        for name, layer in model.named_modules():
            if isinstance(layer, TensorizedEmbedding):
                tables[name] = {
                    "rows": layer.num_embeddings,
                    "row_shape": list(layer.row_shape),
                    "format": layer.format,
                    "ranks": list(layer.weight.ranks),
                    "params": layer.get_num_params(),
                    "dense_params": layer.dense_params(),
                }
        dense = sum(t["dense_params"] for t in tables.values())
        stored = sum(t["params"] for t in tables.values())
        rates = [r["samples_per_second"] for r in history if "samples_per_second" in r]
        extras: dict[str, Any] = {
            "samples_per_second": sum(rates) / len(rates) if rates else float("nan"),
            "world_size": self.ctx.world_size,
            "peak_rss_mb_per_process": gather_objects(peak_rss_mb(), self.ctx),
            "tensorized_tables": tables,
            "tensorized_tables_dense_params": dense,
            "tensorized_tables_params": stored,
            "tensorized_tables_compression": dense / stored if stored else float("nan"),
        }
        if isinstance(self.test, SyntheticClicks):
            logits = torch.cat([self.test.teacher_logits(b.dense, b.sparse) for b in self.test])
            labels = torch.cat([b.label for b in self.test])
            extras["teacher_auc"] = roc_auc(logits, labels)
            extras["teacher_logloss"] = binary_log_loss(logits, labels)
        return extras
