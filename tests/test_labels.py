from petlab.data.labels import ALL_BREEDS, CAT_BREEDS, DOG_BREEDS, breed_id, breed_of, class_id, species_of


def test_species_comes_from_the_case_of_the_first_letter():
    assert species_of("Abyssinian_12") == "cat"
    assert species_of("american_bulldog_3") == "dog"


def test_breed_is_the_name_before_the_number_with_its_spelling():
    assert breed_of("Egyptian_Mau_120") == "Egyptian_Mau"
    assert breed_of("staffordshire_bull_terrier_9") == "staffordshire_bull_terrier"
    assert breed_of("Abyssinian") is None
    assert breed_of("generated12") is None


def test_ids_follow_the_release_numbering():
    assert len(ALL_BREEDS) == 37 and len(CAT_BREEDS) == 12 and len(DOG_BREEDS) == 25
    assert [class_id(b) for b in ("Abyssinian", "american_bulldog", "Bengal", "yorkshire_terrier")] == [
        1,
        2,
        6,
        37,
    ]
    assert breed_id("Abyssinian") == 1 and breed_id("Sphynx") == 12
    assert breed_id("american_bulldog") == 1 and breed_id("yorkshire_terrier") == 25
