"""Prompt formatting and PaliGemma SentencePiece tokenisation for PI0 (48 tokens) and PI0.5 (200).

Ids follow PaliGemma: pad=0 (also the padding value), eos=1, bos=2, unk=3; vocabulary 257152.
Matches lerobot 0.6.1: `policies/pi0/processor_pi0.py` Pi0NewLineProcessor,
`policies/pi05/processor_pi05.py` Pi05PrepareStateTokenizerProcessorStep and
`processor/tokenizer_processor.py` (BOS, right padding to max_length, truncation on the right).
Consumer: preprocessing.Preprocessor.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import sentencepiece as spm

from pi0_ttnn_node.config import MODEL_TYPES
from pi0_ttnn_node.errors import ObservationError, TokenizerError

log = logging.getLogger(__name__)

PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3
MAX_MODEL_BYTES = 64 << 20  # the real PaliGemma model is 4.2 MB
STATE_BINS = np.linspace(-1.0, 1.0, 256 + 1)[:-1]  # 256 bins of width 2/256 over [-1, 1]
WHERE_TO_GET = ("PaliGemma's SentencePiece model is gated on the Hugging Face hub; download "
                "gs://big_vision/paligemma_tokenizer.model (public) or tokenizer.model from "
                "google/paligemma-3b-pt-224 and put it in the checkpoint directory or point "
                "tokenizer_path at it")


@dataclass
class TokenizedPrompt:
    tokens: np.ndarray  # [B, L] int64, right-padded with PAD_ID
    masks: np.ndarray  # [B, L] bool, True on real tokens
    truncated: List[bool]
    num_tokens: List[int]  # real tokens after truncation


def discretize_state(state: np.ndarray) -> np.ndarray:
    """Map a normalised state to PI0.5's 256 bins; below -1 gives -1, >= 0.9921875 gives 255."""
    return np.digitize(state, STATE_BINS) - 1


def format_prompt(instruction: str, model_type: str, state: Optional[np.ndarray] = None) -> str:
    """Build the text that is tokenised, as lerobot 0.6.1 does for this model type."""
    if model_type == "pi0":
        # Pi0NewLineProcessor: no cleaning, "\n" appended unless present, tokenised in one call.
        return instruction if instruction.endswith("\n") else instruction + "\n"
    # Pi05PrepareStateTokenizerProcessorStep: strip, "_" and "\n" to spaces, no lower-casing; the
    # state is normalised and *not* padded (0.4.x padded it to max_state_dim first).
    cleaned = instruction.strip().replace("_", " ").replace("\n", " ")
    state_str = " ".join(map(str, discretize_state(np.asarray(state)).tolist()))
    return f"Task: {cleaned}, State: {state_str};\nAction: "


class PromptTokenizer:
    """Formats prompts and turns them into fixed-length token and mask arrays."""

    def __init__(self, model_path: "str | Path", max_length: int, model_type: str) -> None:
        if model_type not in MODEL_TYPES:
            raise TokenizerError(f"model_type must be one of {MODEL_TYPES}, got {model_type!r}")
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
            raise TokenizerError(f"max_length must be an integer >= 2, got {max_length!r}")
        self.path = Path(model_path)
        self.max_length = max_length
        self.model_type = model_type
        self._sp = _load(self.path)
        self._cache: Dict[str, List[int]] = {}  # PI0 prompts repeat every step
        self._warned: set = set()

    @property
    def vocab_size(self) -> int:
        return int(self._sp.get_piece_size())

    def encode(self, text: str) -> List[int]:
        """Token ids of `text` with BOS prepended, not padded or truncated."""
        return self._sp.encode(text, add_bos=True)

    def tokenize(self, instructions: Sequence[str],
                 states: Optional[np.ndarray] = None) -> TokenizedPrompt:
        """Tokenise a batch; PI0.5 needs `states`, the normalised unpadded state [B, state_dim]."""
        if isinstance(instructions, str) or not all(isinstance(t, str) for t in instructions):
            raise ObservationError(f"instructions must be a sequence of str, got {instructions!r}")
        batch = len(instructions)
        if self.model_type == "pi05":
            states = self._check_states(states, batch)
        tokens = np.full((batch, self.max_length), PAD_ID, dtype=np.int64)
        masks = np.zeros((batch, self.max_length), dtype=bool)
        truncated, counts = [], []
        for b, text in enumerate(instructions):
            ids = self._ids(text, None if states is None else states[b])
            cut = len(ids) > self.max_length
            if cut:
                self._warn_truncated(text, len(ids))
                ids = ids[:self.max_length]
            tokens[b, :len(ids)] = ids
            masks[b, :len(ids)] = True
            truncated.append(cut)
            counts.append(len(ids))
        return TokenizedPrompt(tokens, masks, truncated, counts)

    def _ids(self, text: str, state: Optional[np.ndarray]) -> List[int]:
        if self.model_type == "pi05":
            return self.encode(format_prompt(text, "pi05", state))
        ids = self._cache.get(text)
        if ids is None:
            if len(self._cache) >= 64:
                self._cache.clear()
            ids = self._cache[text] = self.encode(format_prompt(text, "pi0"))
        return ids

    def _check_states(self, states: Optional[np.ndarray], batch: int) -> np.ndarray:
        if states is None:
            raise ObservationError("PI0.5 writes the state into the prompt, but no state was "
                                   "given")
        states = np.asarray(states, dtype=np.float64)
        if states.ndim != 2 or states.shape[0] != batch:
            raise ObservationError(f"states must have shape [{batch}, state_dim], got "
                                   f"{states.shape}")
        if not np.all(np.isfinite(states)):
            raise ObservationError(f"normalised state has non-finite values {states.tolist()}; "
                                   "check the robot state and the normalisation statistics")
        return states

    def _warn_truncated(self, text: str, length: int) -> None:
        if text in self._warned:
            return
        if len(self._warned) >= 64:
            self._warned.clear()
        self._warned.add(text)
        log.warning("prompt has %d tokens, more than max_length %d; truncating (kept the "
                    "first %d): %r", length, self.max_length, self.max_length, text[:80])


def _load(path: Path) -> spm.SentencePieceProcessor:
    if not path.exists():
        raise TokenizerError(f"tokenizer model {path} does not exist; {WHERE_TO_GET}")
    if not path.is_file():
        raise TokenizerError(f"tokenizer model {path} is not a regular file; {WHERE_TO_GET}")
    size = path.stat().st_size
    if not 0 < size <= MAX_MODEL_BYTES:
        raise TokenizerError(f"tokenizer model {path} has {size} bytes, expected 1 to "
                             f"{MAX_MODEL_BYTES}; is it a SentencePiece .model file?")
    sp = spm.SentencePieceProcessor()
    try:
        sp.load_from_serialized_proto(path.read_bytes())
    except (OSError, RuntimeError) as err:
        msg = f"cannot load tokenizer model {path} as SentencePiece: {err}; {WHERE_TO_GET}"
        raise TokenizerError(msg) from err
    if sp.get_piece_size() <= BOS_ID or sp.bos_id() != BOS_ID or sp.id_to_piece(PAD_ID) != "<pad>":
        raise TokenizerError(
            f"tokenizer model {path} does not use PaliGemma's special ids (bos={sp.bos_id()}, "
            f"piece 0={sp.id_to_piece(0) if sp.get_piece_size() else None!r}); expected bos=2 "
            f"and '<pad>' at 0. {WHERE_TO_GET}")
    return sp


# Small deterministic corpus for tests and tiny checkpoints: robot instructions plus every word
# and digit that the PI0.5 prompt format produces.
_CORPUS = [
    "pick up the red cube and place it in the box", "push the green block to the left",
    "open the top drawer", "close the microwave door", "put the bowl on the plate",
    "stack the blue cup on the yellow cup", "turn on the stove", "fold the towel in half",
    "move the arm up slowly", "grasp the handle and pull", "wipe the table with the sponge",
    "put the black bowl in the bottom drawer of the cabinet", "pick_up_the_ketchup",
    "Task: pick up the cube, State: 128 130 127 0 255;\nAction: ",
]
_CORPUS += [f"State: {' '.join(str(v) for v in range(i, i + 16))};" for i in range(0, 256, 16)]


def train_tiny_tokenizer(out_path: Path, vocab_size: int = 384) -> Path:
    """Train a small byte-fallback BPE SentencePiece model with PaliGemma's special ids."""
    out_path = Path(out_path)
    model = io.BytesIO()
    spm.set_random_generator_seed(0)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_CORPUS), model_writer=model, vocab_size=vocab_size,
        model_type="bpe", byte_fallback=True, character_coverage=1.0, num_threads=1,
        pad_id=PAD_ID, eos_id=EOS_ID, bos_id=BOS_ID, unk_id=UNK_ID, pad_piece="<pad>",
        eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>", user_defined_symbols=["\n"],
        normalization_rule_name="identity", add_dummy_prefix=False,
        remove_extra_whitespaces=False, split_digits=True, allow_whitespace_only_pieces=True,
        hard_vocab_limit=False, minloglevel=2)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(model.getvalue())
    return out_path
