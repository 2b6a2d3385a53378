"""A PyTorch Lightning objective with Optuna's pruning callback, as Optuna's example writes it,
and `check_pruned()` after `fit`, as the callback's docs ask (it reads `trial.study._storage`)."""

import lightning.pytorch as pl
import torch
from optuna_integration import PyTorchLightningPruningCallback
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data import TensorDataset

X = torch.randn(256, 4, generator=torch.Generator().manual_seed(0))
Y = (X @ torch.tensor([1.0, -2.0, 0.5, 0.0])).unsqueeze(1)


class Net(pl.LightningModule):
    def __init__(self, lr: float) -> None:
        super().__init__()
        self.lr, self.layer = lr, nn.Linear(4, 1)

    def training_step(self, batch, _):
        x, y = batch
        return nn.functional.mse_loss(self.layer(x), y)

    def validation_step(self, batch, _):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.layer(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def objective(trial):
    lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    data = DataLoader(TensorDataset(X, Y), batch_size=64)
    callback = PyTorchLightningPruningCallback(trial, monitor="val_loss")
    trainer = pl.Trainer(max_epochs=6, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[callback], accelerator="cpu", devices=1)
    trainer.fit(Net(lr), data, data)
    callback.check_pruned()
    return trainer.callback_metrics["val_loss"].item()
