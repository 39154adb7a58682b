"""The words the toy's solutions are written with: every phrasing a step, a plan, a goal or an ending
can take (placeholders in braces). More phrasings mean more free choices per solution, which is where
the toy's entropy lives; the numbers stay in the equations, where they decide the answer.
"""

FIRST = ["First,", "To start,", "We begin:", ""]
THEN = ["Then", "Next,", "After that,", "Now", "So"]
PRODUCT_PHRASES = {
    "buy_boxes": [
        "the {container} hold {f} * {per} = {p} {item}.",
        "compute the {item} in the {container}: {f} * {per} = {p}.",
        "we find {f} * {per} = {p} {item} in the {container}.",
        "{f} {container} of {per} make {f} * {per} = {p}.",
    ],
    "give_each": [
        "the friends get {f} * {per} = {p} {item}.",
        "compute the {item} given away: {f} * {per} = {p}.",
        "we find {f} * {per} = {p} {item} for the friends.",
        "{f} friends with {per} each is {f} * {per} = {p}.",
    ],
}
INTROS = [
    "Let's count step by step.",
    "We follow the {item} through each change.",
    "Let's track how many {item} {name} has.",
    "We work through the story one event at a time.",
]
GOALS = [
    "The question asks how many {item} {name} has at the end.",
    "We need the number of {item} that {name} has after every change.",
    "Our goal is the final count of {item}, so we keep a running total.",
    "We want to know how many {item} are left with {name} in the end.",
]
# Why the running count changes, in words (no numbers: the numbers stay in the equations).
REASONS = {
    "buy": ["after buying more,", "since {name} buys more,", "adding the new {item},"],
    "give": ["after giving some away,", "since {name} gives some away,", "taking away the gift,"],
    "buy_boxes": ["adding the {container},", "with the {container} added,", "counting the new {container},"],
    "give_each": ["after the friends get theirs,", "taking away the gifts,", "without the shared {item},"],
    "double": ["after the count is multiplied,", "since the {item} multiply,", "scaling the count,"],
}
RUNNING_PHRASES = [
    "{v} {op} {a} = {r}.",
    "{name} has {v} {op} {a} = {r} {item}.",
    "we get {v} {op} {a} = {r}.",
    "that makes {v} {op} {a} = {r} {item}.",
]
ENDINGS = [
    "The answer is \\boxed{{{n}}}.",
    "So the final answer is \\boxed{{{n}}}.",
    "Therefore, {name} has \\boxed{{{n}}} {item}.",
    "{name} ends up with \\boxed{{{n}}} {item}.",
]
