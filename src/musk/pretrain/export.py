"""From a training run to the published key layout: the MUSK weights of a checkpoint, heads and decoder
dropped, as one safetensors file that ``musk.create_model(name, pretrained=path)`` loads strictly.

Checkpoint files are read as tensors only (``weights_only=True``): a file that would run code is refused.
"""

from __future__ import annotations

import logging
import os
import pickle
import tempfile
from pathlib import Path

import torch
import yaml

from ..files import write_json, write_safetensors
from ..messages import listing
from ..models import CheckpointMismatchError, create_model
from ..models.loading import read_state_dict
from ..provenance import provenance
from ..training.checkpoint import TRAINER_STATE, best_checkpoint, check_tensors_only, latest_checkpoint
from .distributed import restore_scalars
from .models import MUSK_PREFIX, musk_weights

__all__ = ["export_weights", "find_checkpoint", "is_training_output", "musk_state_from_checkpoint"]

logger = logging.getLogger(__name__)

_MODEL_FILES = ("model.safetensors", "pytorch_model.bin", "pytorch_model_fsdp.bin")
_SHARDED = "pytorch_model_fsdp_0"  # FSDP SHARDED_STATE_DICT: a torch.distributed.checkpoint folder
_DEEPSPEED = "pytorch_model/mp_rank_00_model_states.pt"  # DeepSpeed ZeRO-1/2: the whole model under "module"


def find_checkpoint(source: str | os.PathLike) -> Path:
    """A checkpoint folder: ``source`` itself, or of a run's output folder the one model selection chose
    (stage 2 with held-out pairs), else the newest."""
    source = Path(source)
    if any((source / name).is_file() for name in (*_MODEL_FILES, _DEEPSPEED)) or (source / _SHARDED).is_dir():
        return source
    found = best_checkpoint(source / "checkpoints") or latest_checkpoint(source / "checkpoints")
    if found is None:
        raise FileNotFoundError(
            f"{source} is neither a checkpoint folder (with {', '.join(_MODEL_FILES)}, {_SHARDED}/ or {_DEEPSPEED}) "
            f"nor a run output folder with checkpoints/step_*"
        )
    return found


def is_training_output(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a pretraining run's output folder or one of its checkpoints."""
    folder = Path(path)
    return folder.is_dir() and ((folder / "checkpoints").is_dir() or (folder / TRAINER_STATE).is_file())


class _ShardIndexReader(pickle.Unpickler):
    """Reads the index (``.metadata``) of a torch.distributed.checkpoint folder, which torch unpickles without
    restriction, allowing only the classes such an index holds."""

    ALLOWED = {
        "torch.distributed.checkpoint.metadata": {"Metadata", "MetadataIndex", "ChunkStorageMetadata", "StorageMeta",
                                                  "TensorStorageMetadata", "BytesStorageMetadata", "TensorProperties",
                                                  "_MEM_FORMAT_ENCODING"},
        "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
        "torch.serialization": {"_get_layout"},
        "torch": {"Size"},
        "pathlib": {"Path", "PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath"},
    }  # fmt: skip

    def find_class(self, module: str, name: str):
        dtype = module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        if not dtype and name not in self.ALLOWED.get(module, ()):
            raise pickle.UnpicklingError(f"it refers to {module}.{name}")
        return super().find_class(module, name)


def _check_shard_index(folder: Path) -> None:
    index = folder / ".metadata"
    try:
        with open(index, "rb") as f:
            _ShardIndexReader(f).load()
    except FileNotFoundError:
        raise FileNotFoundError(f"{folder} has no .metadata: it is not a complete sharded checkpoint") from None
    except Exception as e:  # noqa: BLE001 - whatever the reason, the index is not read further
        raise ValueError(f"{index} is not a plain checkpoint index ({e}): it is not loaded, as loading it could "
                         f"run code. Use only checkpoints this package wrote") from None  # fmt: skip


def _load_sharded(folder: Path) -> dict[str, torch.Tensor]:
    """The whole state dict of an FSDP ``SHARDED_STATE_DICT`` checkpoint, merged in this process."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    _check_shard_index(folder)
    with tempfile.TemporaryDirectory() as tmp:
        merged = Path(tmp) / "merged.pt"
        dcp_to_torch_save(folder, merged)
        state = torch.load(merged, map_location="cpu", weights_only=True)
    return state["model"] if set(state) == {"model"} else state  # accelerate saves {"model": state_dict}


def musk_state_from_checkpoint(checkpoint: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The ``musk.*`` tensors of a training checkpoint, renamed to the published keys."""
    checkpoint = find_checkpoint(checkpoint)
    files = [checkpoint / n for n in (*_MODEL_FILES, _DEEPSPEED) if (checkpoint / n).is_file()]
    if files:
        path = files[0]
        check_tensors_only(path)
        state = read_state_dict(path, model_key="module" if path == checkpoint / _DEEPSPEED else "")
    else:
        path = checkpoint / _SHARDED
        state = _load_sharded(path)
    musk = musk_weights(state)
    if not musk:
        raise CheckpointMismatchError(f"{path} holds no MUSK weights (no keys starting with {MUSK_PREFIX!r})")
    return musk


def _architecture(checkpoint: Path) -> str | None:
    for folder in (checkpoint, checkpoint.parent, checkpoint.parent.parent):
        config = folder / "config.yaml"
        if config.is_file():
            return yaml.safe_load(config.read_text()).get("model")
    return None


def export_weights(
    source: str | os.PathLike, output: str | os.PathLike, model: str | None = None, dtype: torch.dtype | None = None
) -> Path:
    """Write the MUSK weights of ``source`` (a run's output folder or one checkpoint) to ``output``
    (a ``.safetensors`` file, written atomically, with ``<output>.json`` provenance beside it).

    ``model``: the architecture (default: the run's ``config.yaml``); the keys are checked against it.
    """
    checkpoint = find_checkpoint(source)
    model = model or _architecture(checkpoint)
    if model is None:
        raise ValueError(f"cannot tell the architecture of {checkpoint}: pass model=")
    state = musk_state_from_checkpoint(checkpoint)
    with torch.device("meta"):
        reference = create_model(model)
    expected = reference.state_dict()
    state = restore_scalars(state, expected)
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        raise CheckpointMismatchError(
            f"{checkpoint} does not fit {model}: missing {listing(missing, 5) or 'none'}, unexpected "
            f"{listing(unexpected, 5) or 'none'}, wrong shapes {listing(wrong, 5) or 'none'}; pass the run's "
            f"architecture as model="
        )
    state = {k: (v.to(dtype) if dtype and v.is_floating_point() else v).contiguous() for k, v in state.items()}
    output = Path(output)
    write_safetensors(state, output, metadata={"format": "pt", "architecture": model})
    write_json(output.with_name(output.name + ".json"), {**provenance({"source": str(checkpoint), "model": model},
               output), "parameters": sum(v.numel() for v in state.values())})  # fmt: skip
    logger.info("exported %d tensors of %s from %s to %s", len(state), model, checkpoint, output)
    return output
