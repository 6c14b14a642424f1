"""Label spaces: normalisation, synonyms, stable union order, mask / index maps, to_union, errors."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from zoo.labels import LabelSpace, LabelSpaceError, build_label_space, normalize_class_name


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Cat", "cat"),
        ("  T-shirt_top ", "t-shirt top"),
        ("t-shirt   TOP", "t-shirt top"),
        ("ankle_boot", "ankle boot"),
        ("Ankle\tBoot\n", "ankle boot"),
        ("__a__b__", "a b"),
        ("STRASSE", "strasse"),
        ("Straße", "strasse"),  # casefold, not lower
        ("   ", ""),
        ("_", ""),
    ],
)
def test_normalize_class_name(raw: str, expected: str) -> None:
    assert normalize_class_name(raw) == expected


def test_normalize_rejects_non_strings() -> None:
    with pytest.raises(TypeError, match="str"):
        normalize_class_name(3)  # type: ignore[arg-type]


def test_union_is_sorted_by_normalised_name_and_display_is_first_spelling() -> None:
    space = build_label_space([["Dog", "cat"], ["CAT", "ant_eater", "dog"]], teachers=["a", "b"])
    assert space.classes == ("ant_eater", "cat", "Dog")
    assert space.teachers == ("a", "b")
    assert space.teacher_classes == (("Dog", "cat"), ("CAT", "ant_eater", "dog"))
    assert space.num_classes == 3 and space.num_teachers == 2


def test_union_order_does_not_depend_on_teacher_or_class_order() -> None:
    lists = [["shirt", "bag", "coat"], ["coat", "sandal"], ["bag", "trouser", "dress"]]
    keys = set()
    for perm in itertools.permutations(lists):
        space = build_label_space([list(reversed(c)) for c in perm])
        keys.add(tuple(normalize_class_name(c) for c in space.classes))
    assert keys == {("bag", "coat", "dress", "sandal", "shirt", "trouser")}


def test_index_and_mask_match_class_names() -> None:
    teacher_classes = [["b", "a"], ["c", "B", "d"], ["d"]]
    space = build_label_space(teacher_classes)
    assert space.classes == ("a", "b", "c", "d")
    assert space.index == ((1, 0), (2, 1, 3), (3,))
    expected = torch.tensor(
        [[True, True, False, False], [False, True, True, True], [False, False, False, True]]
    )
    assert space.mask.dtype == torch.bool
    assert torch.equal(space.mask, expected)
    # each teacher output points at the union class of the same normalised name
    for i, classes in enumerate(teacher_classes):
        for k, name in enumerate(classes):
            assert normalize_class_name(space.classes[space.index[i][k]]) == normalize_class_name(name)
    # the mask is a fresh tensor: mutating it does not change the space
    m = space.mask
    m[:] = False
    assert space.mask.sum() == 6


def test_default_teacher_names() -> None:
    assert build_label_space([["a"], ["b"]]).teachers == ("teacher_0", "teacher_1")


def test_synonyms_merge_names() -> None:
    space = build_label_space(
        [["T-shirt/top", "Trouser"], ["tee", "pants", "Bag"]],
        teachers=["t1", "t2"],
        synonyms={"Tee": "t-shirt/top", "PANTS": "trouser"},
    )
    assert space.classes == ("Bag", "T-shirt/top", "Trouser")
    assert space.index == ((1, 2), (1, 2, 0))
    assert space.index_of("tee") == space.index_of("T-SHIRT/TOP") == 1
    assert space.index_of(" pants ") == 2


def test_synonym_display_uses_canonical_spelling_when_no_teacher_has_it() -> None:
    space = build_label_space([["tee"], ["t_shirt"]], synonyms={"tee": "T-shirt", "t shirt": "T-shirt"})
    assert space.classes == ("T-shirt",)
    assert space.index == ((0,), (0,))
    # a teacher spelling of the canonical name wins over the map's spelling
    space = build_label_space([["tee"], ["t-SHIRT"]], synonyms={"tee": "T-shirt"})
    assert space.classes == ("t-SHIRT",)


def test_synonym_chains_resolve_and_cycles_are_refused() -> None:
    space = build_label_space([["a"], ["b"], ["c"]], synonyms={"a": "b", "b": "c"})
    assert space.classes == ("c",)
    assert space.index == ((0,), (0,), (0,))
    with pytest.raises(LabelSpaceError, match="cycle"):
        build_label_space([["a"]], synonyms={"a": "b", "b": "a"})
    with pytest.raises(LabelSpaceError, match="both"):
        build_label_space([["a"]], synonyms={"a": "b", "A ": "c"})
    with pytest.raises(LabelSpaceError, match="empty"):
        build_label_space([["a"]], synonyms={"a": " _ "})


def test_index_of_unknown_class_raises_key_error() -> None:
    space = build_label_space([["a", "b"]])
    assert space.index_of("B") == 1
    with pytest.raises(KeyError, match="zebra"):
        space.index_of("zebra")
    assert space.teacher_index("teacher_0") == 0
    with pytest.raises(KeyError, match="nobody"):
        space.teacher_index("nobody")


def test_to_union_lays_out_logits() -> None:
    space = build_label_space([["b", "a"], ["c", "a"]], teachers=["x", "y"])
    z1 = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    z2 = torch.tensor([[7.0, 8.0], [9.0, 10.0], [11.0, 12.0]])
    z = space.to_union([z1, z2])
    assert z.shape == (3, 2, 3) and z.dtype == torch.float32
    # union order a, b, c
    assert torch.equal(z[:, 0], torch.stack([z1[:, 1], z1[:, 0], torch.zeros(3)], dim=1))
    assert torch.equal(z[:, 1], torch.stack([z2[:, 1], torch.zeros(3), z2[:, 0]], dim=1))
    assert torch.all(z[~space.mask.unsqueeze(0).expand_as(z)] == 0)
    # gathering the union back with the index map gives each teacher's logits in its own order
    for i, zi in enumerate([z1, z2]):
        assert torch.equal(z[:, i, list(space.index[i])], zi)


def test_to_union_dtype_and_gradients() -> None:
    space = build_label_space([["a"], ["a", "b"]])
    z1 = torch.randn(2, 1, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(2, 2)
    z = space.to_union([z1, z2])
    assert z.dtype == torch.float64
    z.sum().backward()
    assert torch.equal(z1.grad, torch.ones(2, 1, dtype=torch.float64))
    # integer inputs give the default float dtype; numpy inputs are accepted
    assert space.to_union([[[1], [2]], [[1, 2], [3, 4]]]).dtype == torch.get_default_dtype()


def test_to_union_validates_shapes() -> None:
    space = build_label_space([["a", "b"], ["c"]], teachers=["x", "y"])
    with pytest.raises(ValueError, match="logits of 1 teachers.*has 2"):
        space.to_union([torch.zeros(4, 2)])
    with pytest.raises(ValueError, match=r"'y'.*\[B, 1\]"):
        space.to_union([torch.zeros(4, 2), torch.zeros(4, 2)])
    with pytest.raises(ValueError, match=r"'x'.*\[B, 2\]"):
        space.to_union([torch.zeros(4), torch.zeros(4, 1)])
    with pytest.raises(ValueError, match="batch size 3"):
        space.to_union([torch.zeros(4, 2), torch.zeros(3, 1)])
    assert space.to_union([torch.zeros(0, 2), torch.zeros(0, 1)]).shape == (0, 2, 3)


def test_dict_round_trip_is_json_able() -> None:
    space = build_label_space(
        [["Tee", "bag"], ["t-shirt", "coat_x"]], teachers=["m1", "m2"], synonyms={"tee": "T-Shirt"}
    )
    d = json.loads(json.dumps(space.to_dict()))
    assert set(d) >= {"classes", "teachers", "teacher_classes"}
    back = LabelSpace.from_dict(d)
    assert back == space
    assert torch.equal(back.mask, space.mask)
    d["classes"] = ["bag", "coat x", "zebra"]
    with pytest.raises(LabelSpaceError, match="differ"):
        LabelSpace.from_dict(d)
    with pytest.raises(LabelSpaceError, match="teacher_classes"):
        LabelSpace.from_dict({"classes": [], "teachers": []})


def test_empty_class_list_names_the_teacher() -> None:
    with pytest.raises(LabelSpaceError, match="teacher 'second'.*empty class list"):
        build_label_space([["a"], []], teachers=["first", "second"])


@pytest.mark.parametrize("bad", ["", "   ", "_", " _ _ "])
def test_name_normalising_to_empty_names_teacher_and_class(bad: str) -> None:
    with pytest.raises(LabelSpaceError, match=rf"teacher 'b'.*{bad!r}.*empty"):
        build_label_space([["a"], ["x", bad]], teachers=["a", "b"])


@pytest.mark.parametrize("first, second", [("Cat", "cat"), ("ankle_boot", "Ankle  Boot"), ("x", " x ")])
def test_duplicate_names_in_one_teacher_name_teacher_and_classes(first: str, second: str) -> None:
    with pytest.raises(LabelSpaceError) as err:
        build_label_space([["a"], ["z", first, second]], teachers=["t0", "t1"])
    msg = str(err.value)
    assert "teacher 't1'" in msg and repr(first) in msg and repr(second) in msg


def test_synonyms_that_merge_two_outputs_of_one_teacher_are_refused() -> None:
    with pytest.raises(LabelSpaceError, match="teacher 'only'.*'tee'.*'t-shirt'.*synonyms"):
        build_label_space([["tee", "t-shirt"]], teachers=["only"], synonyms={"tee": "t-shirt"})


def test_same_name_in_different_teachers_is_fine() -> None:
    space = build_label_space([["cat"], ["cat"]])
    assert space.classes == ("cat",)
    assert space.mask.all()


@pytest.mark.parametrize(
    "args, match",
    [
        (([],), "no teachers"),
        (("abc",), "list of class-name lists"),
        (([["a"], ["b"]], ["only-one"]), "2 class lists"),
        (([["a"], ["b"]], ["t", "t"]), "unique"),
        (([["a"], "bc"], ["t0", "t1"]), "teacher 't1'"),
        (([["a", 3]], ["t0"]), "teacher 't0'.*3"),
    ],
)
def test_invalid_arguments(args: tuple, match: str) -> None:
    with pytest.raises(LabelSpaceError, match=match):
        build_label_space(*args)
