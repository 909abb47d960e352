"""The built-in synonym table of the EDA augmentation (data only): small groups of interchangeable words.

General English and review vocabulary; no WordNet, so nothing is downloaded. Each word maps to the rest of its
group (and of every other group it is in). Pass ``synonyms=`` to :func:`hf_lite.data.augment_data` for a
domain table.

>>> SYNONYMS["film"]
('movie', 'picture')
"""

from __future__ import annotations

__all__ = ["SYNONYMS", "SYNONYM_GROUPS"]

#: Groups of words that can replace one another, one group per string.
SYNONYM_GROUPS = (
    "good fine nice decent solid",
    "great excellent superb wonderful terrific outstanding",
    "bad poor awful lousy",
    "terrible horrible dreadful atrocious",
    "boring dull tedious tiresome",
    "funny amusing hilarious comic",
    "interesting engaging intriguing absorbing",
    "beautiful lovely gorgeous stunning",
    "ugly hideous unsightly",
    "smart clever intelligent bright",
    "stupid dumb silly foolish",
    "big large huge enormous",
    "small little tiny minor",
    "fast quick rapid swift",
    "slow sluggish plodding",
    "happy glad cheerful joyful",
    "sad unhappy gloomy melancholy",
    "strange odd weird peculiar",
    "easy simple effortless",
    "hard difficult tough",
    "new fresh novel",
    "old ancient dated",
    "important significant major",
    "real genuine authentic",
    "strong powerful forceful",
    "weak feeble flimsy",
    "movie film picture",
    "story tale narrative plot",
    "actor performer player",
    "director filmmaker",
    "scene sequence episode",
    "character figure role",
    "ending finale conclusion",
    "audience viewers spectators",
    "work effort piece",
    "love adore enjoy",
    "hate loathe detest",
    "like enjoy appreciate",
    "make create produce",
    "show display reveal",
    "seem appear look",
    "try attempt",
    "begin start commence",
    "end finish conclude",
    "help aid assist",
    "very really extremely truly",
    "often frequently regularly",
    "almost nearly virtually",
    "quite rather fairly",
    "completely totally entirely utterly",
)


def _table(groups: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """``{word: synonyms}``: each word of a group maps to the others, groups merged in order, no repeats."""
    table: dict[str, tuple[str, ...]] = {}
    for group in groups:
        words = group.split()
        for word in words:
            table[word] = tuple(dict.fromkeys([*table.get(word, ()), *(o for o in words if o != word)]))
    return table


#: Word -> its synonyms, built from :data:`SYNONYM_GROUPS`.
SYNONYMS: dict[str, tuple[str, ...]] = _table(SYNONYM_GROUPS)
