"""State-dict plumbing shared by every weight format: safe reading, key clean-up, strict verification.

A state dict here is a plain `dict[str, torch.Tensor]`. Every check names the file it came from and the first
offending key, in one line, so a user can tell a truncated download from a checkpoint of another network.
"""
from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from ..errors import WeightsError

# ConvNormAct registers its conv and norm twice (attribute + `all_modules` Sequential): same tensors, two names.
ALIAS_TO_CANONICAL = {".all_modules.0.": ".conv.", ".all_modules.1.": ".norm."}


def read_torch_checkpoint(path: Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The state dict of a `torch.save` file: its 'model_state_dict' entry, or the file itself if it is one.

    Loads with `weights_only=True` (tensors and plain containers only; nothing in the file is executed) and
    memory-maps zip-format files so that optimizer state stored beside the weights is never read.
    `allow_pickle=True` permits full unpickling, which can run code from the file: only for trusted files.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: file not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=not allow_pickle,
                                mmap=zipfile.is_zipfile(path))
    except Exception as error:  # torch reports damage as OSError, KeyError, EOFError, RuntimeError, ...
        reason = " ".join(str(error).split())
        if "Unsupported global" in reason:
            needed = reason[reason.index("Unsupported global"):].split(" was not")[0]
            raise WeightsError(f"{path}: needs full pickle loading, which can run code from the file ({needed}); "
                               "rerun with --allow-pickle only if you trust its source") from None
        raise WeightsError(f"{path}: cannot be read, the file is truncated or corrupt "
                           f"({type(error).__name__}: {reason[:200] or 'no detail'})") from None
    if isinstance(checkpoint, Mapping) and "model_state_dict" in checkpoint:
        checkpoint = checkpoint["model_state_dict"]
    if not isinstance(checkpoint, Mapping) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise WeightsError(f"{path}: not a checkpoint (expected a dict of tensors or one with 'model_state_dict')")
    return dict(checkpoint)


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    """Remove a leading `prefix` (DistributedDataParallel's 'module.') from every key that has it."""
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}


def canonical_key(key: str) -> str:
    """The `.conv.` / `.norm.` name of a conv/norm alias key; other keys unchanged."""
    for alias, canonical in ALIAS_TO_CANONICAL.items():
        key = key.replace(alias, canonical)
    return key


def expected_shapes(module: torch.nn.Module) -> dict[str, torch.Size]:
    """Key → shape of a module's state dict (works on a module built on the 'meta' device)."""
    return {k: v.shape for k, v in module.state_dict().items()}


def check_state(expected: Mapping[str, torch.Size], state: Mapping[str, torch.Tensor], source) -> None:
    """Raise WeightsError unless `state` has exactly the keys of `expected`, each with its shape.

    Reports the first missing key, else the first unexpected key, else the first mis-shaped key (in the
    network's key order), with the count of further problems of the same kind.
    """
    def report(problem: str, keys: list[str]) -> str:
        more = f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""
        return f"{source}: {problem} {keys[0]!r}{more}"

    missing = [k for k in expected if k not in state]
    if missing:
        raise WeightsError(report("missing key", missing) + "; the file does not match the network configuration")
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        raise WeightsError(report("unexpected key", unexpected) + "; the file does not match the network configuration")
    misshaped = [k for k in expected if tuple(state[k].shape) != tuple(expected[k])]
    if misshaped:
        key = misshaped[0]
        raise WeightsError(report("wrong shape for key", misshaped) +
                           f": file has {list(state[key].shape)}, the network expects {list(expected[key])}")


def drop_aliases(state: Mapping[str, torch.Tensor], source) -> dict[str, torch.Tensor]:
    """Keep one name per tensor (the canonical `.conv.`/`.norm.` one); an alias must equal its canonical twin.

    Aliases whose twin is absent are renamed to the canonical name.
    """
    canonical: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        name = canonical_key(key)
        if name in canonical:
            if not torch.equal(canonical[name], tensor):
                raise WeightsError(f"{source}: alias keys of {name!r} hold different tensors; the file is corrupt")
            continue
        canonical[name] = tensor
    return canonical


def restore_aliases(state: Mapping[str, torch.Tensor], keys) -> dict[str, torch.Tensor]:
    """Expand a canonical state dict to the key set `keys` (a network's state-dict keys, aliases included).

    Keys neither present nor aliases of a present key stay absent, so a later strict check reports them.
    """
    full = dict(state)
    for key in keys:
        canonical = canonical_key(key)
        if key not in full and canonical != key and canonical in state:
            full[key] = state[canonical]
    return full


def load_strict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], source) -> None:
    """Verify `state` against the module (every key, every shape), then load it strictly."""
    check_state(expected_shapes(module), state, source)
    module.load_state_dict(state, strict=True)
