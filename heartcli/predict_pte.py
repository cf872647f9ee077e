"""`heart predict` and `heart evaluate` with an exported ExecuTorch program (``.pte``).

The program is checked against the ``model_card.json`` beside it (listed, same SHA-256)
and its planned input shapes against the card's (beats ``[batch, length]``, and rhythm
``[batch, 9]`` for a rhythm model) before anything runs, so a program of another model is
one error line, not a runtime failure inside ExecuTorch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from heartcli.errors import DataError

if TYPE_CHECKING:
    from heartcli.predict import Model


def load_pte(path: Path) -> Model:
    """An exported .pte, after checking that its card describes exactly this program."""
    from heartcli.config import RHYTHM_FEATURES
    from heartcli.export.pte import pte_runner, pte_signature, require_executorch
    from heartcli.predict import CARD_NAME, Model, check_card_entry, read_card

    require_executorch()
    card = read_card(path)
    check_card_entry(path, card)
    card_path = path.parent / CARD_NAME
    classes = [str(c) for c in card["classes"]]
    length = int((card.get("input") or {}).get("length", -1))
    rhythm = bool(card.get("rhythm_input"))
    shapes = pte_signature(path)
    wanted = [length, len(RHYTHM_FEATURES)] if rhythm else [length]
    got = [s[1] if len(s) == 2 else None for s in shapes]
    if got != wanted:
        raise DataError(
            f"{path.name} takes inputs of {got} values per beat but {card_path} says {wanted}; "
            "the program belongs to another model: export again"
        )
    lead = str((card.get("input") or {}).get("lead", "channel0"))
    class_map = {str(k): str(v) for k, v in (card.get("class_map") or {}).items()}
    return Model(path, "pte", classes, length, lead, pte_runner(path), class_map, rhythm=rhythm)
