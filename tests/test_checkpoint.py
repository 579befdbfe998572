"""The model file is self-contained and rejects bad files with a clear error."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from nmt.batch import make_batch
from nmt.checkpoint import load_checkpoint, load_model, save_checkpoint, save_model, saved_decode
from nmt.config import DecodeConfig
from nmt.ensemble import average_models
from nmt.errors import NMTError
from nmt.tokenizer import Tokenizer, train_spm

from conftest import tiny_model

LINES = ["a red dog runs", "ein roter Hund läuft", "the small cat sleeps", "die kleine Katze schläft"] * 20


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    proto = train_spm(LINES, 40, "bpe", 1000)
    return Tokenizer(proto, proto)


def test_model_file_rebuilds_model_and_tokenizer(tmp_path, tok):
    model = tiny_model(
        src_vocab_size=tok.src_vocab_size, tgt_vocab_size=tok.tgt_vocab_size, tie_embeddings=True
    ).eval()
    save_model(tmp_path / "m.safetensors", model, tok, {"step": 7})
    loaded, loaded_tok, info = load_model(tmp_path / "m.safetensors")
    assert loaded.cfg == model.cfg and info == {"step": 7}
    assert loaded_tok.src_proto == tok.src_proto and loaded_tok.joint
    batch = make_batch([[4, 5, 6]], [[7, 8]])
    torch.testing.assert_close(loaded.logits(batch), model.logits(batch))
    assert not list(tmp_path.glob(".*"))  # no temporary file left


def test_model_file_carries_its_decoding_settings(tmp_path, tok):
    from safetensors.torch import save_file

    from nmt.translate import Translator

    model = tiny_model(src_vocab_size=tok.src_vocab_size, tgt_vocab_size=tok.tgt_vocab_size).eval()
    chosen, path = DecodeConfig(beam=3, length_penalty=2.0, max_len_offset=4), tmp_path / "m.safetensors"
    save_model(path, model, tok, decode=chosen)
    assert saved_decode(path) == chosen and Translator.load(path).defaults == chosen
    assert Translator.load(path, decode=DecodeConfig()).defaults == DecodeConfig()  # given ones win
    average_models([path, path], tmp_path / "avg.safetensors")
    assert saved_decode(tmp_path / "avg.safetensors") == chosen
    # A file from before the settings were saved gets DecodeConfig's; a corrupted one a one-line error.
    with safe_open(str(path), framework="pt") as f:
        metadata, tensors = f.metadata(), {name: f.get_tensor(name) for name in f.keys()}
    del metadata["decode_config"]
    save_file(tensors, tmp_path / "old.safetensors", metadata)
    assert saved_decode(tmp_path / "old.safetensors") == DecodeConfig()
    load_model(tmp_path / "old.safetensors")
    save_file(tensors, tmp_path / "bad.safetensors", metadata | {"decode_config": '{"beam": "five"}'})
    with pytest.raises(NMTError, match=r"bad.safetensors: decode.beam: expected int, got str 'five'"):
        Translator.load(tmp_path / "bad.safetensors")
    save_file(tensors, tmp_path / "bad.safetensors", metadata | {"decode_config": '{"beam": 0}'})
    with pytest.raises(NMTError, match=r"bad.safetensors: decode.beam must be positive"):
        saved_decode(tmp_path / "bad.safetensors")


def test_shared_embeddings_stay_one_matrix_through_training_and_the_model_file(tmp_path, tok):
    sizes = dict(src_vocab_size=tok.src_vocab_size, tgt_vocab_size=tok.tgt_vocab_size, tie_embeddings=True)
    model, apart = tiny_model(share_embeddings=True, **sizes), tiny_model(**sizes)
    assert model.encoder.embed.weight is model.decoder.embed.weight
    assert apart.num_parameters() - model.num_parameters() == model.encoder.embed.weight.numel()
    batch = make_batch([[4, 5, 6]], [[7, 8, 4]])
    model(batch).backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert model.encoder.embed.weight is model.decoder.embed.weight
    save_model(tmp_path / "m.safetensors", model, tok)
    with safe_open(str(tmp_path / "m.safetensors"), framework="pt") as f:
        assert "decoder.embed.weight" in f.keys() and "encoder.embed.weight" not in f.keys()  # held once
    loaded, _, _ = load_model(tmp_path / "m.safetensors")
    assert loaded.encoder.embed.weight is loaded.decoder.embed.weight
    torch.testing.assert_close(loaded.logits(batch), model.eval().logits(batch))
    with pytest.raises(ValueError, match="shared embeddings for 41 source and 40 target pieces"):
        tiny_model(share_embeddings=True, src_vocab_size=41, tgt_vocab_size=40)


def test_bad_model_files_give_clear_errors(tmp_path, tok):
    model = tiny_model(src_vocab_size=tok.src_vocab_size, tgt_vocab_size=tok.tgt_vocab_size)
    good = tmp_path / "m.safetensors"
    save_model(good, model, tok)
    data = good.read_bytes()
    cases = {
        "truncated": data[: len(data) // 2],
        "garbage": b"\x00\x01hello" * 100,
        "empty": b"",
        "text": b"this is not a model\n",
    }
    for name, content in cases.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(content)
        with pytest.raises(NMTError, match=rf"{name}.safetensors: not an nmt model file"):
            load_model(path)
    with pytest.raises(NMTError, match="model file not found"):
        load_model(tmp_path / "none.safetensors")


def test_other_version_and_foreign_safetensors(tmp_path, tok):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, tmp_path / "foreign.safetensors")
    with pytest.raises(NMTError, match="without nmt's metadata"):
        load_model(tmp_path / "foreign.safetensors")
    save_file(
        {"w": torch.zeros(2)},
        tmp_path / "future.safetensors",
        metadata={"format": "nmt-model", "version": "99"},
    )
    with pytest.raises(NMTError, match="model file version '99', this nmt reads versions 1 to 2"):
        load_model(tmp_path / "future.safetensors")


def test_checkpoint_round_trip_and_errors(tmp_path):
    state = {"model": {"w": torch.arange(3.0)}, "step": 5, "rng": torch.get_rng_state(), "names": ["a"]}
    save_checkpoint(tmp_path / "c.pt", state)
    loaded = load_checkpoint(tmp_path / "c.pt")
    assert loaded["step"] == 5 and torch.equal(loaded["model"]["w"], state["model"]["w"])
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(NMTError, match="bad.pt: not a loadable checkpoint"):
        load_checkpoint(tmp_path / "bad.pt")


def test_version_1_files_load_as_they_were_saved(tmp_path, tok):
    """Version 1 kept the output layer's pieces as the buffer `decoder.output_ids`: such a file still loads,
    with that output vocabulary and the same weights."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from nmt.checkpoint import tensor_digest

    pieces = [0, 1, 2, 3, 5, 8, 13]
    model = tiny_model(
        pieces=pieces, src_vocab_size=tok.src_vocab_size, tgt_vocab_size=tok.tgt_vocab_size
    ).eval()
    save_model(tmp_path / "v2.safetensors", model, tok)
    with safe_open(str(tmp_path / "v2.safetensors"), framework="pt") as f:
        metadata, tensors = f.metadata(), {name: f.get_tensor(name) for name in f.keys()}
    tensors["decoder.output_ids"] = tensors.pop("decoder.vocab.pieces")
    save_file(
        tensors,
        tmp_path / "v1.safetensors",
        metadata={**metadata, "version": "1", "sha256": tensor_digest(tensors)},
    )
    loaded, _, _ = load_model(tmp_path / "v1.safetensors")
    assert loaded.vocab.pieces.tolist() == pieces
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
