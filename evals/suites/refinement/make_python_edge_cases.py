"""Writes ``python_edge_cases.jsonl`` beside this file: small Python functions whose prompt
states an edge case (empty input, zero, negatives, ties) and whose tests check it.

Why a second Python suite: ``python_functions`` asks for one-liners (square, add, reverse) that
SmolLM2-135M-Instruct already writes correctly 80% of the time single-shot, so no strategy can
show a 1.5x lift there. Here every function has one stated edge case next to its ordinary
cases; a draft that handles only the ordinary case fails, and the ``python_tests`` verifier's
feedback names the failing assert, as in Self-Debug (Chen et al. 2023) and Reflexion. The suite
was written before any run on it and not adjusted after. Run
``python evals/suites/refinement/make_python_edge_cases.py`` to regenerate (deterministic).
"""

from __future__ import annotations

import json
from pathlib import Path

SUFFIX = " Reply with the code only."

#: (signature, what it returns including the edge case, tests)
FUNCTIONS = [
    (
        "safe_div(a, b)",
        "a divided by b, or None when b is 0",
        ["assert safe_div(6, 3) == 2", "assert safe_div(1, 0) is None"],
    ),
    (
        "first_or_none(items)",
        "the first element of the list items, or None when the list is empty",
        ["assert first_or_none([4, 5]) == 4", "assert first_or_none([]) is None"],
    ),
    (
        "mean(items)",
        "the mean of the numbers in the list items, or 0.0 when the list is empty",
        ["assert mean([1, 2, 3]) == 2", "assert mean([]) == 0.0"],
    ),
    (
        "sign(x)",
        "-1 when x is negative, 0 when x is zero and 1 when x is positive",
        ["assert sign(-3) == -1", "assert sign(0) == 0", "assert sign(7) == 1"],
    ),
    (
        "clamp(x, low, high)",
        "x limited to the range from low to high (low when x is below it, high when above)",
        [
            "assert clamp(5, 0, 10) == 5",
            "assert clamp(-2, 0, 10) == 0",
            "assert clamp(12, 0, 10) == 10",
        ],
    ),
    (
        "count_words(s)",
        "the number of words in the string s separated by whitespace (0 for an empty or blank string)",
        [
            "assert count_words('a b  c') == 3",
            "assert count_words('') == 0",
            "assert count_words('   ') == 0",
        ],
    ),
    (
        "last_char(s)",
        "the last character of the string s, or the empty string when s is empty",
        ["assert last_char('abc') == 'c'", "assert last_char('') == ''"],
    ),
    (
        "max_or_default(items, default)",
        "the largest number in the list items, or default when the list is empty",
        ["assert max_or_default([3, 9, 2], 0) == 9", "assert max_or_default([], -1) == -1"],
    ),
    (
        "is_palindrome(s)",
        "True when the string s reads the same backwards, ignoring case",
        [
            "assert is_palindrome('Level') is True",
            "assert is_palindrome('abc') is False",
            "assert is_palindrome('') is True",
        ],
    ),
    (
        "digit_sum(n)",
        "the sum of the decimal digits of the integer n, also for negative n",
        ["assert digit_sum(123) == 6", "assert digit_sum(-45) == 9", "assert digit_sum(0) == 0"],
    ),
    (
        "unique(items)",
        "the list items without duplicates, keeping the first occurrence of each in order",
        ["assert unique([3, 1, 3, 2, 1]) == [3, 1, 2]", "assert unique([]) == []"],
    ),
    (
        "is_leap(year)",
        "True when year is a leap year in the Gregorian calendar (divisible by 4, except centuries not divisible by 400)",
        [
            "assert is_leap(2024) is True",
            "assert is_leap(1900) is False",
            "assert is_leap(2000) is True",
            "assert is_leap(2023) is False",
        ],
    ),
    (
        "median(items)",
        "the median of the non-empty list of numbers items (the mean of the two middle values when the length is even)",
        ["assert median([3, 1, 2]) == 2", "assert median([4, 1, 3, 2]) == 2.5"],
    ),
    (
        "fib(n)",
        "the n-th Fibonacci number, with fib(0) == 0 and fib(1) == 1",
        ["assert fib(0) == 0", "assert fib(1) == 1", "assert fib(10) == 55"],
    ),
    (
        "factorial(n)",
        "n factorial for n >= 0, and raises ValueError when n is negative",
        [
            "assert factorial(0) == 1",
            "assert factorial(5) == 120",
            "try:\n    factorial(-1)\nexcept ValueError:\n    pass\nelse:\n    raise AssertionError('no ValueError')",
        ],
    ),
    (
        "safe_int(s)",
        "the string s converted to an int, or None when s is not an integer",
        [
            "assert safe_int('42') == 42",
            "assert safe_int('-7') == -7",
            "assert safe_int('x1') is None",
        ],
    ),
    (
        "second_largest(items)",
        "the second largest distinct number in the list items, or None when there are fewer than two distinct numbers",
        ["assert second_largest([4, 1, 4, 3]) == 3", "assert second_largest([5, 5]) is None"],
    ),
    (
        "chunks(items, size)",
        "the list items split into lists of length size, the last one possibly shorter",
        [
            "assert chunks([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]",
            "assert chunks([], 3) == []",
        ],
    ),
    (
        "initials(name)",
        "the upper-case first letters of the words in the string name, joined without spaces ('' for an empty string)",
        ["assert initials('ada lovelace') == 'AL'", "assert initials('') == ''"],
    ),
    (
        "percent(part, total)",
        "part as a percentage of total rounded to one decimal place, or 0.0 when total is 0",
        [
            "assert percent(1, 4) == 25.0",
            "assert percent(1, 3) == 33.3",
            "assert percent(5, 0) == 0.0",
        ],
    ),
]


#: A reference solution per function: the suite's tests are satisfiable (tests/unit checks it).
REFERENCE = {
    "safe_div": "def safe_div(a,b):\n    return None if b==0 else a/b",
    "first_or_none": "def first_or_none(items):\n    return items[0] if items else None",
    "mean": "def mean(items):\n    return sum(items)/len(items) if items else 0.0",
    "sign": "def sign(x):\n    return (x>0)-(x<0)",
    "clamp": "def clamp(x,low,high):\n    return max(low,min(high,x))",
    "count_words": "def count_words(s):\n    return len(s.split())",
    "last_char": "def last_char(s):\n    return s[-1:]",
    "max_or_default": "def max_or_default(items, default):\n    return max(items) if items else default",
    "is_palindrome": "def is_palindrome(s):\n    s=s.lower()\n    return s==s[::-1]",
    "digit_sum": "def digit_sum(n):\n    return sum(int(c) for c in str(abs(n)))",
    "unique": "def unique(items):\n    return list(dict.fromkeys(items))",
    "is_leap": "def is_leap(y):\n    return y%4==0 and (y%100!=0 or y%400==0)",
    "median": "def median(items):\n    s=sorted(items);n=len(s)\n    return s[n//2] if n%2 else (s[n//2-1]+s[n//2])/2",
    "fib": "def fib(n):\n    a,b=0,1\n    for _ in range(n): a,b=b,a+b\n    return a",
    "factorial": "def factorial(n):\n    if n<0: raise ValueError\n    r=1\n    for i in range(2,n+1): r*=i\n    return r",
    "safe_int": "def safe_int(s):\n    try:\n        return int(s)\n    except ValueError:\n        return None",
    "second_largest": "def second_largest(items):\n    s=sorted(set(items))\n    return s[-2] if len(s)>1 else None",
    "chunks": "def chunks(items,size):\n    return [items[i:i+size] for i in range(0,len(items),size)]",
    "initials": "def initials(name):\n    return ''.join(w[0].upper() for w in name.split())",
    "percent": "def percent(part,total):\n    return round(part/total*100,1) if total else 0.0",
}


def main(path: Path | None = None) -> None:
    path = path or Path(__file__).with_name("python_edge_cases.jsonl")
    lines = []
    for i, (signature, returns, tests) in enumerate(FUNCTIONS):
        prompt = f"Write a Python function {signature} that returns {returns}.{SUFFIX}"
        item = {
            "id": f"pyedge-{i:02d}",
            "prompt": prompt,
            "verifier": {"type": "python_tests", "tests": tests},
        }
        lines.append(json.dumps(item))
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
