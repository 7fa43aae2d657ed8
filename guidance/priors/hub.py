"""Loading pretrained components from a Hugging Face hub id or a local folder, with one clear error.

`from_pretrained` fails in many ways (offline and not cached, unknown id, malformed id, a folder
without the expected files, a corrupt config); they all surface as OSError or ValueError. `load` turns
them into one PriorError that says what was asked for, what went wrong and how to get the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from .base import PriorError


def is_local(source: str) -> bool:
    """True when `source` names (or looks like it names) a folder rather than a hub id."""
    return Path(source).expanduser().exists() or source.startswith(("/", ".", "~")) or source.count("/") > 1


def how_to_get(source: str, what: str, folder_layout: str) -> str:
    """The 'what to do next' sentence of a missing-model error."""
    if is_local(source):
        return (f"Check that the folder {source!r} exists and holds {folder_layout} (for example from "
                f"`hf download <hub id> --local-dir {source}`).")
    return (f"Download it once with `hf download {source}` (`huggingface-cli download {source}` with older "
            f"huggingface_hub; it then loads offline from the cache), or pass a local folder that holds "
            f"{folder_layout}.")


def load(loader: Callable[..., Any], source: str, what: str, folder_layout: str, fallback: str,
         **kwargs) -> Any:
    """loader(source, **kwargs) (a `from_pretrained`), with its failures turned into one PriorError.

    Args:
        what: the component, for the message ("Stable Diffusion UNet")
        folder_layout: what a local folder must contain, for the message
        fallback: the last sentence (e.g. "or run offline with --model procedural")
    """
    try:
        return loader(source, **kwargs)
    except (OSError, ValueError) as e:  # what from_pretrained raises for missing / malformed models
        reason = str(e).strip().splitlines()[0].rstrip(".") if str(e).strip() else type(e).__name__
        raise PriorError(
            f"could not load the {what} from {source!r}: {reason[:300]}. "
            f"{how_to_get(source, what, folder_layout)} {fallback}"
        ) from e


def require_subfolders(source: str, names: tuple[str, ...], what: str, fallback: str) -> None:
    """For a local folder, check that each subfolder exists (loaders may otherwise fall back silently
    to defaults, e.g. a tokenizer with an empty vocabulary)."""
    root = Path(source).expanduser()
    if not is_local(source):
        return
    missing = [n for n in names if not (root / n).is_dir()]
    if not root.is_dir() or missing:
        layout = ", ".join(f"{n}/" for n in names)
        found = "does not exist" if not root.is_dir() else f"lacks {', '.join(m + '/' for m in missing)}"
        raise PriorError(f"the {what} folder {source!r} {found}; it must hold {layout} (for example from "
                         f"`hf download <hub id> --local-dir {source}`). {fallback}")
