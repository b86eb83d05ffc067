"""Vocabulary shared by every layer (DESIGN §1): phases, lesion classes, label values."""

from __future__ import annotations

#: Ordered DCE phases, named as in the LLD-MMRI 2023 challenge.
PHASES: tuple[str, ...] = ("pre", "arterial", "venous", "delayed")
#: Default acquisition times after injection, seconds, one per phase.
DEFAULT_PHASE_TIMES_S: tuple[float, ...] = (0.0, 35.0, 70.0, 180.0)

#: Lesion classes by LLD-MMRI id.
CLASS_NAMES: tuple[str, ...] = (
    "hemangioma",
    "ICC",
    "abscess",
    "metastasis",
    "cyst",
    "FNH",
    "HCC",
)
NUM_CLASSES = len(CLASS_NAMES)

#: Label-map values.
BACKGROUND, LIVER, LESION = 0, 1, 2
LABEL_NAMES: tuple[str, ...] = ("background", "liver", "lesion")


def class_id(name_or_id: str | int) -> int:
    """Return the LLD-MMRI class id for a class name (case-insensitive) or a valid id."""
    if isinstance(name_or_id, int):
        if not 0 <= name_or_id < NUM_CLASSES:
            raise ValueError(f"class id {name_or_id} is outside 0..{NUM_CLASSES - 1}")
        return name_or_id
    lowered = {n.lower(): i for i, n in enumerate(CLASS_NAMES)}
    key = str(name_or_id).strip().lower()
    if key.isdigit():
        return class_id(int(key))
    if key not in lowered:
        raise ValueError(f"unknown lesion class {name_or_id!r}; expected one of {', '.join(CLASS_NAMES)}")
    return lowered[key]
