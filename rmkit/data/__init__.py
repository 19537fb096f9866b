"""Preference data: one record per pair, readers for the common formats, per-row status, splits.

Every input row ends as a `RowResult`: either a usable `PreferencePair` (status ``ok`` or
``diverged_history``) or a status that says why not. Nothing is dropped silently: the load report
counts every status, and `strict=True` turns the first bad row into an error naming file, row and
field.

Formats (detected from the columns, or named with ``format=``):

- ``hh``: raw hh-rlhf transcripts, ``chosen``/``rejected`` are whole dialogues
  (``"\n\nHuman: ...\n\nAssistant: ..."``). The shared turns become the prompt, the rest the
  responses. If the two dialogues differ before their final Assistant turn, the prompt is the
  longest common prefix of turns and each response holds every turn after it; the row gets status
  ``diverged_history`` (usable, and counted in the report so a user can exclude it).
- ``trl``: ``prompt``/``chosen``/``rejected`` as strings or as chat-message lists (TRL's standard and
  conversational formats; a string prompt becomes one user message).
- ``conversational``: ``chosen``/``rejected`` message lists without ``prompt`` (TRL's implicit-prompt
  format): the shared prefix is the prompt.
- ``moss``: MOSS-RLHF ``chosen``/``rejected`` lists of utterances; the last one is the response and the
  ones before it alternate Human/Assistant so that the last context utterance is the Human's.
- ``pairwise``: two responses and a winner (``query``/``response1``/``response2``/``human`` as in
  LLMEval², winner ``model1``, ``model2`` or ``TIE``). Ties get status ``tie`` unless
  ``allow_ties=True``, in which case they are pairs with ``label = 0.5``.

Optional columns carried through: ``id``, ``margin`` (as TRL and OpenRLHF read it), ``weight``,
``label`` (probability that ``chosen`` is preferred; 1.0 for ordinary pairs), ``subset``, and
``original_label`` (written by `rmkit denoise`: the label before denoising, which evaluation uses).
"""

from .pairs import (
    DataError,
    LoadReport,
    MAX_PAIRS_HELP,
    Message,
    PreferenceDataset,
    PreferencePair,
    ROLE_NAMES,
    RowResult,
    STATUSES,
    USABLE,
    as_messages,
    no_pairs_message,
    pairs_at,
    pair_column,
    pairs_by_id,
    pairs_fingerprint,
    stratified_sample,
    transcript,
)
from .formats import (
    FORMATS,
    KNOWN_FIELDS,
    NUMERIC_FIELDS,
    WINNER_VALUES,
    detect_format,
    record_to_row,
    split_hh_transcript,
)
from .readers import FILE_SUFFIXES, SPLIT_NAMES, data_folder_guard, load_preferences
from .splits import check_split_fractions, get_splits, load_splits, save_splits, split_ids
from .tables import TABLE_SUFFIXES, read_ids, read_table
from .noise import inject_label_flips
from .source import DataConfig, DataSource, run_data, text_lengths

__all__ = [
    "DataConfig",
    "DataError",
    "DataSource",
    "FILE_SUFFIXES",
    "FORMATS",
    "KNOWN_FIELDS",
    "LoadReport",
    "MAX_PAIRS_HELP",
    "Message",
    "NUMERIC_FIELDS",
    "PreferenceDataset",
    "PreferencePair",
    "ROLE_NAMES",
    "RowResult",
    "SPLIT_NAMES",
    "STATUSES",
    "TABLE_SUFFIXES",
    "USABLE",
    "WINNER_VALUES",
    "as_messages",
    "check_split_fractions",
    "data_folder_guard",
    "detect_format",
    "get_splits",
    "inject_label_flips",
    "load_preferences",
    "load_splits",
    "no_pairs_message",
    "pairs_at",
    "pair_column",
    "pairs_by_id",
    "pairs_fingerprint",
    "read_ids",
    "read_table",
    "record_to_row",
    "run_data",
    "save_splits",
    "split_hh_transcript",
    "split_ids",
    "stratified_sample",
    "text_lengths",
    "transcript",
]
