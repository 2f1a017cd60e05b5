"""Training callbacks of our own: a generated text sample in TensorBoard at every validation."""

import lightning as L
import numpy as np
from lightning.pytorch.loggers import TensorBoardLogger

from charlm.models.runner import TorchRunner
from charlm.sampling import sample_text


class TextSampleCallback(L.Callback):
    def __init__(self, num_tokens: int = 200, temperature: float = 0.8, prompt: str = "\n", seed: int = 0):
        self.num_tokens = num_tokens
        self.temperature = temperature
        self.prompt = prompt
        self.seed = seed
        self.last_sample = ""

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or self.num_tokens < 1:
            return
        # A fixed seed for each sample, so successive samples show the model changing, not the dice.
        with TorchRunner(pl_module.model) as runner:
            self.last_sample = sample_text(runner, pl_module.vocab, self.prompt, self.num_tokens,
                                           temperature=self.temperature, rng=np.random.default_rng(self.seed))
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                # Indented lines render as a code block in TensorBoard, which keeps line breaks.
                markdown = "\n".join("    " + line for line in (self.prompt + self.last_sample).splitlines())
                logger.experiment.add_text("sample", markdown, trainer.global_step)
