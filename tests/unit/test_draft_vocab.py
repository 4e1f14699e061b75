"""A reduced draft vocabulary (eagle.decode.draft_vocab): counts from the head's training
shards, the most frequent ids, drafting inside them only, and outputs unchanged."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from spadec.decoding.autoregressive import autoregressive_decode
from spadec.decoding.draft import DraftLMHead, TreeParams, draft_tree, head_extend
from spadec.decoding.eagle2 import eagle2_decode
from spadec.eagle.data import SHARD_FILE
from spadec.eagle.head import new_head, save_head
from spadec.eagle.vocab import (
    COUNTS_FILE,
    DraftVocabError,
    answer_token_counts,
    draft_token_ids,
    load_token_counts,
    main,
)
from spadec.runtime.cache import LayerSkipCache
from tests.unit.test_eagle_decode import SHAPE, dense, prompt


def _shard(path, ids, mask):
    path.mkdir(parents=True)
    save_file(
        {
            "input_ids": torch.tensor(ids, dtype=torch.int32),
            "loss_mask": torch.tensor(mask, dtype=torch.uint8),
        },
        str(path / SHARD_FILE),
    )


def test_counts_are_answer_tokens_and_the_vocabulary_their_most_frequent_ids(tmp_path):
    # prompt tokens (mask 0) do not count: 7 appears 3 times in prompts, once in answers
    _shard(tmp_path / "a", [7, 7, 7, 1, 2, 2, 7], [0, 0, 0, 1, 1, 1, 1])
    _shard(tmp_path / "b", [3, 3, 5, 1], [1, 1, 1, 1])
    counts = answer_token_counts([tmp_path / "a", tmp_path / "b"], 10)
    assert counts.tolist() == [0, 2, 2, 2, 0, 1, 0, 1, 0, 0]
    # 1, 2, 3 (twice each), then the tie 5 / 7 goes to the lower id; returned in id order
    assert draft_token_ids(counts, 4, "head").tolist() == [1, 2, 3, 5]
    assert draft_token_ids(counts, 99, "head").tolist() == list(range(10))
    with pytest.raises(DraftVocabError, match=r"head: .*no token_counts.*draft_vocab: null"):
        draft_token_ids(None, 4, "head")
    with pytest.raises(DraftVocabError, match="token id 7 >= vocabulary 5"):
        answer_token_counts([tmp_path / "a"], 5)
    with pytest.raises(DraftVocabError, match="not an EAGLE data shard"):
        answer_token_counts([tmp_path / "missing"], 10)


def test_the_counts_travel_with_the_head_and_can_be_added_later(tmp_path):
    model = dense()
    head = new_head(model)
    counts = torch.arange(SHAPE["vocab_size"])
    save_head(head, tmp_path / "head", token_counts=counts)
    assert torch.equal(load_token_counts(tmp_path / "head"), counts)
    save_head(head, tmp_path / "old")  # a head from before, or a published one
    assert load_token_counts(tmp_path / "old") is None
    _shard(tmp_path / "shard", [4, 4, 9], [0, 1, 1])
    assert main(["--head", str(tmp_path / "old"), "--data", str(tmp_path / "shard")]) == 0
    added = load_token_counts(tmp_path / "old")
    assert added[4] == 1 and added[9] == 1 and int(added.sum()) == 2
    assert (tmp_path / "old" / COUNTS_FILE).is_file()


def test_drafts_stay_inside_the_vocabulary_and_the_full_one_changes_nothing():
    model = dense()
    head = new_head(model).double().eval()
    torch.manual_seed(1)
    feats = torch.randn(5, SHAPE["hidden_size"], dtype=torch.float64)
    ids = torch.randint(0, SHAPE["vocab_size"], (5,))
    cache = LayerSkipCache.empty(1)
    root_hidden = head_extend(head, cache, feats, ids)[-1]
    params = TreeParams(12, 3, 3)
    full = draft_tree(head, model.lm_head, cache, root_hidden, int(ids[-1]), params)
    every = DraftLMHead(model.lm_head, torch.arange(SHAPE["vocab_size"]))
    same = draft_tree(head, every, cache, root_hidden, int(ids[-1]), params)
    assert torch.equal(same.tokens, full.tokens) and torch.equal(same.parents, full.parents)
    allowed = torch.arange(0, SHAPE["vocab_size"], 7)  # 14 ids, none of them chosen by use
    reduced = draft_tree(
        head, DraftLMHead(model.lm_head, allowed), cache, root_hidden, int(ids[-1]), params
    )
    assert set(reduced.tokens[1:].tolist()) <= set(allowed.tolist())
    assert len(reduced.tokens) == params.total_tokens


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_greedy_eagle2_with_a_reduced_vocabulary_equals_greedy_ar(kind):
    model = dense(kind)
    head = new_head(model).double().eval()
    ids = prompt()
    ar = autoregressive_decode(model, ids, 40)
    # a vocabulary that holds some of ar's tokens and misses others
    allowed = torch.tensor(sorted(set(ar.output_ids[::2]) | {0, 1, 2, 3}))
    ours = eagle2_decode(
        model, head, ids, TreeParams(8, 3, 3), 40, draft_lm_head=DraftLMHead(model.lm_head, allowed)
    )
    assert ours.output_ids == ar.output_ids
