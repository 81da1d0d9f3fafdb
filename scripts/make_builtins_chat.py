#!/usr/bin/env python
"""Write the worked example's chat data: question -> answer pairs about Python built-ins, as JSONL.

``python scripts/make_builtins_chat.py [OUT]`` (default ``configs/train/data/python-builtins-chat.jsonl``)

Each line is ``{"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}``; every built-in is
asked about in several phrasings (one conversation each), some with a system message, so a held-out
conversation is usually a new phrasing of a fact seen in training. The answers are written here, in
this file; the output is deterministic.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "configs" / "train" / "data" / "python-builtins-chat.jsonl"

FACTS = {
    "abs": "abs(x) returns the absolute value of a number: abs(-3) is 3.",
    "all": "all(iterable) returns True when every element is true, and True for an empty iterable.",
    "any": "any(iterable) returns True when at least one element is true, and False for an empty iterable.",
    "ascii": "ascii(obj) returns a printable representation of obj with non-ASCII characters escaped.",
    "bin": "bin(n) converts an integer to a binary string that starts with 0b: bin(5) is '0b101'.",
    "bool": "bool(x) converts a value to True or False; empty containers, zero and None are false.",
    "bytearray": "bytearray(...) builds a mutable sequence of bytes, values from 0 to 255.",
    "bytes": "bytes(...) builds an immutable sequence of bytes, values from 0 to 255.",
    "callable": "callable(obj) returns True when obj can be called, like a function or a class.",
    "chr": "chr(i) returns the one-character string for a Unicode code point: chr(97) is 'a'.",
    "classmethod": "classmethod turns a method into one that receives the class as its first argument.",
    "complex": "complex(real, imag) builds a complex number: complex(1, 2) is (1+2j).",
    "delattr": "delattr(obj, name) deletes the attribute called name from obj.",
    "dict": "dict(...) builds a dictionary, a mapping from keys to values.",
    "dir": "dir(obj) returns a sorted list of the names an object has.",
    "divmod": "divmod(a, b) returns the pair (a // b, a % b): divmod(7, 2) is (3, 1).",
    "enumerate": "enumerate(iterable) yields pairs of an index and an element, starting at 0.",
    "eval": "eval(text) evaluates a Python expression given as a string and returns its value.",
    "exec": "exec(code) runs Python statements given as a string or a code object.",
    "filter": "filter(function, iterable) yields the elements for which the function returns true.",
    "float": "float(x) converts a number or a string to a floating point number.",
    "format": "format(value, spec) formats a value with a format specification like '.2f'.",
    "frozenset": "frozenset(iterable) builds an immutable set, which can be a dictionary key.",
    "getattr": "getattr(obj, name, default) returns the attribute called name, or default if it is missing.",
    "globals": "globals() returns the dictionary of the current module's global names.",
    "hasattr": "hasattr(obj, name) returns True when obj has an attribute called name.",
    "hash": "hash(obj) returns the integer hash of an object, used by dictionaries and sets.",
    "help": "help(obj) shows the documentation of an object in the interactive interpreter.",
    "hex": "hex(n) converts an integer to a hexadecimal string that starts with 0x: hex(255) is '0xff'.",
    "id": "id(obj) returns an integer that identifies the object while it exists.",
    "input": "input(prompt) prints the prompt and returns the line the user types, as a string.",
    "int": "int(x) converts a number or a string to an integer: int('42') is 42.",
    "isinstance": "isinstance(obj, cls) returns True when obj is an instance of cls or of a subclass.",
    "issubclass": "issubclass(a, b) returns True when class a is b or derives from b.",
    "iter": "iter(obj) returns an iterator over obj.",
    "len": "len(x) returns the number of items in a container such as a list, a string or a dict.",
    "list": "list(iterable) builds a new list from the elements of an iterable.",
    "locals": "locals() returns a dictionary of the current local names.",
    "map": "map(function, iterable) yields the function applied to every element.",
    "max": "max(iterable) returns the largest element; max(a, b) returns the larger of two values.",
    "memoryview": "memoryview(obj) gives access to the bytes of an object without copying them.",
    "min": "min(iterable) returns the smallest element; min(a, b) returns the smaller of two values.",
    "next": "next(iterator, default) returns the next element of an iterator, or default when it is exhausted.",
    "object": "object is the base class of every class in Python.",
    "oct": "oct(n) converts an integer to an octal string that starts with 0o: oct(8) is '0o10'.",
    "open": "open(path, mode) opens a file and returns a file object; mode 'r' reads and 'w' writes.",
    "ord": "ord(c) returns the Unicode code point of a one-character string: ord('a') is 97.",
    "pow": "pow(base, exp, mod) raises base to the power exp, optionally modulo mod.",
    "print": "print(*values) writes the values to standard output, separated by spaces.",
    "property": "property turns a method into an attribute that is computed when it is read.",
    "range": "range(start, stop, step) is an immutable sequence of integers from start up to stop.",
    "repr": "repr(obj) returns the developer-facing string of an object, often valid Python.",
    "reversed": "reversed(seq) returns an iterator over a sequence from the last element to the first.",
    "round": "round(x, n) rounds a number to n digits; halves go to the even neighbour: round(2.5) is 2.",
    "set": "set(iterable) builds a mutable set of unique elements.",
    "setattr": "setattr(obj, name, value) sets the attribute called name on obj to value.",
    "slice": "slice(start, stop, step) builds a slice object, what a[1:5:2] uses.",
    "sorted": "sorted(iterable) returns a new sorted list; key= and reverse= change the order.",
    "staticmethod": "staticmethod turns a method into a plain function stored on the class.",
    "str": "str(obj) returns the readable string of an object.",
    "sum": "sum(iterable, start) adds the elements of an iterable to start, which is 0 by default.",
    "super": "super() returns a proxy that calls methods of the parent class.",
    "tuple": "tuple(iterable) builds an immutable sequence from the elements of an iterable.",
    "type": "type(obj) returns the class of an object; type(3) is int.",
    "vars": "vars(obj) returns the __dict__ of an object, its attribute dictionary.",
    "zip": "zip(*iterables) yields tuples that pair up the elements of several iterables.",
}

QUESTIONS = (
    "What does {name}() do in Python?",
    "Explain the built-in {name}.",
    "How do I use {name} in Python?",
    "What is {name}?",
)
SYSTEM = "You answer questions about Python built-ins in one sentence."


def conversations() -> list[dict]:
    """Every (built-in, phrasing) conversation, in a fixed order."""
    out = []
    for i, (name, answer) in enumerate(FACTS.items()):
        for j, question in enumerate(QUESTIONS):
            messages = [{"role": "user", "content": question.format(name=name)},
                        {"role": "assistant", "content": answer}]
            if (i + j) % 3 == 0:
                messages.insert(0, {"role": "system", "content": SYSTEM})
            out.append({"messages": messages})
    return out


def main(argv: list[str]) -> int:
    """Write the JSONL file."""
    out = Path(argv[0]) if argv else DEFAULT_OUT
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(c) + "\n" for c in conversations()), encoding="utf-8")
    print(f"wrote {len(FACTS) * len(QUESTIONS)} conversations to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
