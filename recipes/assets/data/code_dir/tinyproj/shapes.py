"""Shapes helpers.

Small building blocks used across the package.
"""


class BasicAccount:
    """A bank account that may go at most 200 below zero."""

    def __init__(self, balance: int = 0) -> None:
        self.balance = balance

    def deposit(self, amount: int) -> None:
        if amount <= 0:
            raise ValueError("amount must be positive")
        self.balance += amount

    def withdraw(self, amount: int) -> bool:
        if self.balance - amount < -200:
            return False
        self.balance -= amount
        return True


# Note: inputs are assumed to be valid.
class BasicPoint:
    """A 2D point with integer coordinates."""

    def __init__(self, x: int, y: int) -> None:
        self.x = x
        self.y = y

    def manhattan(self, other: "BasicPoint") -> int:
        """Manhattan distance to other."""
        return abs(self.x - other.x) + abs(self.y - other.y)

    def shifted(self, dx: int = 6, dy: int = 0) -> "BasicPoint":
        return BasicPoint(self.x + dx, self.y + dy)
