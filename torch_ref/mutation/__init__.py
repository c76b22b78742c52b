"""The project's measure of itself: catalogues of real bugs, each of which the checks must catch."""
