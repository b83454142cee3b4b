"""A sentencepiece tokenizer with the special tokens the sequence layout needs.

We drive `sentencepiece` directly rather than through `transformers.LlamaTokenizer`: the latter needs
protobuf to load a folder and silently builds an empty tokenizer from `vocab_file=`.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

PAD, BOS, EOS, BOI, EOI = "<pad>", "<bos>", "<eos>", "<boi>", "<eoi>"
SPECIAL_TOKENS = (PAD, BOS, EOS, BOI, EOI)
MODEL_FILENAME = "tokenizer.model"


class Tokenizer:
    """Text <-> ids. `encode` adds no special tokens; the sequence layout places them."""

    def __init__(self, processor: spm.SentencePieceProcessor, model_bytes: bytes):
        self._processor = processor
        self._model_bytes = model_bytes
        missing = [tok for tok in (BOS, EOS, BOI, EOI) if processor.piece_to_id(tok) == processor.unk_id()]
        if missing:
            raise ValueError(f"sentencepiece model lacks the special tokens {missing}; train one with "
                             "Tokenizer.train or add them as control_symbols")
        self.bos_id = processor.piece_to_id(BOS)
        self.eos_id = processor.piece_to_id(EOS)
        self.boi_id = processor.piece_to_id(BOI)
        self.eoi_id = processor.piece_to_id(EOI)
        pad = processor.piece_to_id(PAD)
        # A foreign model without <pad> pads with <eos>: padding is masked out everywhere anyway.
        self.pad_id = pad if pad != processor.unk_id() else self.eos_id

    @property
    def vocab_size(self) -> int:
        return self._processor.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self._processor.encode(text, out_type=int)

    def decode(self, ids: Sequence[int]) -> str:
        """Decode ids, dropping special tokens."""
        special = {self.pad_id, self.bos_id, self.eos_id, self.boi_id, self.eoi_id}
        return self._processor.decode([int(i) for i in ids if int(i) not in special])

    # ---- construction ----
    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 512, model_type: str = "bpe") -> Tokenizer:
        """Train a sentencepiece model on `texts` (in memory) with our special tokens.

        If the corpus has fewer distinct pieces than `vocab_size`, the size is lowered to what it holds
        (sentencepiece would otherwise refuse), so tiny synthetic corpora just work.
        """
        texts = [t for t in texts if t and t.strip()]
        if not texts:
            raise ValueError("Tokenizer.train needs at least one non-empty text")
        model = io.BytesIO()
        options = dict(
            model_writer=model, model_type=model_type, vocab_size=vocab_size,
            # The specials are control symbols (sentencepiece's own bos/eos disabled): fixed ids
            # 0, 2, 3, 4, 5, and user text that spells "<boi>" can never produce the real token.
            pad_id=0, unk_id=1, bos_id=-1, eos_id=-1, control_symbols=[BOS, EOS, BOI, EOI],
            pad_piece=PAD, character_coverage=1.0, hard_vocab_limit=False, byte_fallback=False,
            train_extremely_large_corpus=False, num_threads=2, minloglevel=2,
        )
        spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), **options)
        return cls.from_bytes(model.getvalue())

    @classmethod
    def from_bytes(cls, model_bytes: bytes) -> Tokenizer:
        processor = spm.SentencePieceProcessor()
        processor.load_from_serialized_proto(model_bytes)
        return cls(processor, model_bytes)

    @classmethod
    def from_file(cls, model_path: str | Path) -> Tokenizer:
        """Load an existing sentencepiece `.model` file (it must contain <bos>, <eos>, <boi>, <eoi>)."""
        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"no sentencepiece model at {path}")
        return cls.from_bytes(path.read_bytes())

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> Tokenizer:
        return cls.from_file(Path(folder) / MODEL_FILENAME)

    def save_pretrained(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / (MODEL_FILENAME + ".tmp")
        tmp.write_bytes(self._model_bytes)
        shutil.move(tmp, folder / MODEL_FILENAME)
