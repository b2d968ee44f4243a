"Fixtures shared by the pytest suite: where the shared test material is, and a clean `__main__`"
import sys

import pytest

from trendyol_clf.core import shared_path


@pytest.fixture(autouse=True)
def keep_main_module():
    "Put pytest's `__main__` back after each test: Streamlit's `AppTest` replaces it and leaves its own"
    main = sys.modules["__main__"]
    yield
    sys.modules["__main__"] = main


@pytest.fixture(scope="session")
def clothing_small():
    "The real photos of `../shared/data/clothing-small`"
    return shared_path("data", "clothing-small")


@pytest.fixture(scope="session")
def fixture_pages():
    "The recorded Trendyol search responses"
    return sorted(shared_path("fixtures", "trendyol-search", "erkek-t-shirt-x-g2-c73").glob("page-*.json"))
