"""Helpers shared by test modules (importable: pytest puts this folder on sys.path for conftest.py)."""

import sys

import pytest
import torch

from tinydot.config import ModelConfig
from tinydot.model import Decoder
from tinydot.training import init_model


def perturbed_model(cfg: ModelConfig, seed: int = 0) -> Decoder:
    """A model of either domain whose units have distinct magnitudes, as after training."""
    model = init_model(cfg, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.1)
    return model.eval()


def user_error(monkeypatch, capsys, *args) -> str:
    """Run the CLI's main() in-process (no interpreter start-up, no torch import per call); assert exit
    status 2 and a one-line message without a traceback or a warning; return the message.

    A warning would reach a user's terminal as more lines; in-process, pytest collects it apart from
    stderr, so it is recorded here and counted with the message. Deprecation warnings are not shown
    to users by default (unless tinydot's own code raises them), so those of other packages pass."""
    import warnings

    from tinydot.cli import main

    monkeypatch.setattr(sys, "argv", ["tinydot", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main()
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    shown = [w for w in caught if not (issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning))
                                       and "tinydot" not in w.filename)]
    assert not shown, [str(w.message) for w in shown]
    return err
