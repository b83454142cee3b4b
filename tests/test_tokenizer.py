import pytest
import sentencepiece as spm

from unimodal.tokenizer import Tokenizer


def test_special_tokens_and_round_trip(tokenizer, tmp_path):
    ids = {tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.boi_id, tokenizer.eoi_id}
    assert len(ids) == 5
    text = "a small red circle at the top left"
    encoded = tokenizer.encode(text)
    assert not ids & set(encoded)
    assert tokenizer.decode([tokenizer.bos_id, *encoded, tokenizer.eos_id]) == text
    tokenizer.save_pretrained(tmp_path)
    loaded = Tokenizer.from_pretrained(tmp_path)
    assert loaded.encode(text) == encoded and loaded.vocab_size == tokenizer.vocab_size


def test_text_cannot_spell_special_tokens(tokenizer):
    specials = {tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.boi_id, tokenizer.eoi_id}
    assert not specials & set(tokenizer.encode("<boi> <eoi> <eos> <bos> <pad>"))


def test_existing_model_file_needs_special_tokens(tmp_path):
    prefix = str(tmp_path / "plain")
    spm.SentencePieceTrainer.train(sentence_iterator=iter(["hello world"] * 50), model_prefix=prefix,
                                   vocab_size=20, minloglevel=2, hard_vocab_limit=False)
    with pytest.raises(ValueError, match="special tokens"):
        Tokenizer.from_file(prefix + ".model")
    with pytest.raises(FileNotFoundError):
        Tokenizer.from_file(tmp_path / "missing.model")


def test_empty_corpus_is_refused():
    with pytest.raises(ValueError, match="non-empty"):
        Tokenizer.train(["", "  "])
