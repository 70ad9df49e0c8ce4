"""Question phrasings for the land-cover reasoning set, one table per class.

Each class has explicit referring expressions (the class is named) and implicit reasoning
questions (the class must be inferred from what it is used for or how it behaves), in the spirit
of EarthReason. Reasoning questions are written so that, among these five classes, the intended
class is the natural answer. Add a class by adding one entry to :data:`CLASS_QUESTIONS`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClassQuestions:
    """The phrasings for one land-cover class.

    Attributes:
        referring: explicit expressions naming the class.
        reasoning: implicit questions whose answer is this class.
        answer: reference answer for reasoning questions.
    """

    referring: tuple[str, ...]
    reasoning: tuple[str, ...]
    answer: str


CLASS_QUESTIONS: dict[str, ClassQuestions] = {
    "building": ClassQuestions(
        referring=("the buildings", "all buildings in the image", "the rooftops of the buildings"),
        reasoning=(
            "Where do people live and work?",
            "Which structures have roofs that could hold solar panels?",
            "Where would people shelter from a sandstorm?",
            "What would a fire brigade be called out to protect?",
            "Where could someone rent an apartment or an office?",
            "Which parts of the scene were constructed to be entered by people?",
            "What would a census taker visit to count households?",
        ),
        answer="The buildings.",
    ),
    "land": ClassQuestions(
        referring=("the unpaved land", "all bare, unpaved ground in the image", "the open sandy or earthen areas"),
        reasoning=(
            "Where could a new house be built without demolishing anything?",
            "Which open ground is neither paved, built on, planted nor under water?",
            "Where would a car kick up dust if it drove across?",
            "Which parts of the scene would turn to mud after heavy rain?",
            "Where could a construction crew set up a site without clearing anything first?",
            "Which areas are still undeveloped bare ground?",
            "Where could children dig in the sand or soil?",
        ),
        answer="The unpaved open land.",
    ),
    "road": ClassQuestions(
        referring=("the roads", "all roads in the image", "the paved streets"),
        reasoning=(
            "What would a delivery truck drive on?",
            "Which surfaces are meant for cars and buses?",
            "Where would you expect traffic jams at rush hour?",
            "What connects the neighbourhoods so that vehicles can travel between them?",
            "Where would lane markings and traffic lights be found?",
            "Which routes could an ambulance take to reach a house?",
            "Where would a snowplough have to clear after a snowfall?",
        ),
        answer="The roads.",
    ),
    "vegetation": ClassQuestions(
        referring=("the vegetation", "all trees, grass and plants in the image", "the green areas"),
        reasoning=(
            "Which surfaces would stay coolest on a summer afternoon?",
            "Which areas need regular watering to stay alive?",
            "Where could sheep or goats graze?",
            "Which areas would a gardener tend?",
            "Which parts of the scene would turn brown in a drought?",
            "Where would birds most likely build their nests?",
            "Which areas produce oxygen through photosynthesis?",
        ),
        answer="The vegetation.",
    ),
    "water": ClassQuestions(
        referring=("the water", "all water bodies in the image", "the water surfaces"),
        reasoning=(
            "Where could a boat travel?",
            "Which areas would reflect the sky on a calm day?",
            "Where could a seaplane land?",
            "Where would a kayaker paddle?",
            "Which areas could not be walked across without getting wet?",
            "Where could someone go fishing?",
            "Where could a ship drop anchor?",
        ),
        answer="The water.",
    ),
}
