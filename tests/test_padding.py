import torch

from gencli.padding import left_pad, padding_lengths, position_ids


def test_left_pad_mask_and_positions():
    input_ids, mask = left_pad([[5, 6], [7, 8, 9, 10], [11]], pad_token_id=0)
    assert input_ids.tolist() == [[0, 0, 5, 6], [7, 8, 9, 10], [0, 0, 0, 11]]
    assert mask.tolist() == [[0, 0, 1, 1], [1, 1, 1, 1], [0, 0, 0, 1]]
    # each row counts from its first real token; padding gets 1, as generate gives it
    assert position_ids(mask).tolist() == [[1, 1, 0, 1], [0, 1, 2, 3], [1, 1, 1, 0]]
    assert padding_lengths(mask).tolist() == [2, 0, 3]


def test_positions_keep_counting_as_the_mask_grows():
    mask = torch.tensor([[0, 1, 1, 1, 1]])
    assert position_ids(mask)[:, -1:].tolist() == [[3]]
