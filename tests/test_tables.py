"""Tables at the terminal: a results table too wide for an 80-column terminal is restacked, so a model's whole name
stays on one line instead of being squeezed into a few letters per line."""

from __future__ import annotations

from rich.console import Console
from rich.markdown import Markdown

from graft.tables import for_width, results_table

NAME = "tf_efficientnet_lite0+tf_efficientnet_lite2 + mlp head"
RESULTS = {"S": 0.8636, "top1": 0.767, "top3": 0.96, "top5": 1.0, "image_top1": 0.767, "images_per_second": 38.1,
           "ms_per_observation": 26.2, "n_observations": 525, "n_images": 525}


def rendered(markdown: str, width: int) -> str:
    console = Console(width=width, record=True, file=open("/dev/null", "w"))  # noqa: SIM115 - closed with the console
    console.print(Markdown(markdown))
    return console.export_text()


def test_at_80_columns_a_wide_results_table_shows_whole_names_and_every_value():
    table = results_table([(NAME, RESULTS), ("default", RESULTS)])
    squeezed = rendered(table, 80)
    assert NAME not in squeezed  # what rich does with the table as it is: the name is cut over several lines
    text = rendered(for_width(table, 80), 80)
    assert NAME in text and "default" in text
    for value in ("0.8636", "0.7670", "38.1", "525"):
        assert value in text
    assert all(len(line) <= 80 for line in text.splitlines())


def test_a_table_that_fits_is_left_as_it_is():
    table = results_table([("a", RESULTS)])
    assert for_width(table, 200) == table
    assert for_width("no table here\n", 20) == "no table here\n"
