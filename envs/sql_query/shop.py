"""The SqlQuery shop: its schema, rows drawn from a seed, and question templates with gold SQL.

Every task has its own small shop (customers, products, orders, order lines) generated from the
task's seed, so that a query memorised from one task does not answer another. The generator
guarantees what the templates rely on: unique customer and product names (without quotes, so the
gold SQL can inline them), a few customers without orders, and every order with a line.

Each template draws its parameters (a city, a category, a month, ...) from the shop it asks
about, so that the answer is never trivially empty, and states exactly what to return: which
columns in which order, and whether row order matters. Only questions that ask for an order are
graded order-sensitively; the others compare result sets as multisets. The gold SQL runs like
the agent's query (in the sandbox, on a copy of the database), so any query returning the same
rows is right: ``NOT IN`` or ``LEFT JOIN``, a subquery or a join.

Non-goals: realistic volumes (a few dozen rows keep results readable in an observation), and
ambiguity handling (each question pins its tie-breaks and rounding).
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SCHEMA = """CREATE TABLE customers (
    customer_id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    city TEXT NOT NULL,
    signup_date TEXT NOT NULL  -- ISO date, YYYY-MM-DD
);
CREATE TABLE products (
    product_id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    category TEXT NOT NULL,
    price_cents INTEGER NOT NULL
);
CREATE TABLE orders (
    order_id INTEGER PRIMARY KEY,
    customer_id INTEGER NOT NULL REFERENCES customers (customer_id),
    order_date TEXT NOT NULL,  -- ISO date, YYYY-MM-DD
    status TEXT NOT NULL  -- 'pending', 'shipped', 'delivered' or 'cancelled'
);
CREATE TABLE order_items (
    order_id INTEGER NOT NULL REFERENCES orders (order_id),
    product_id INTEGER NOT NULL REFERENCES products (product_id),
    quantity INTEGER NOT NULL,
    PRIMARY KEY (order_id, product_id)
);"""

CITIES = ("Lisbon", "Porto", "Braga", "Faro", "Coimbra")
STATUSES = ("pending", "shipped", "delivered", "cancelled")
FIRST_NAMES = ("Alice", "Bruno", "Carla", "Diogo", "Eva", "Filipe", "Gina", "Hugo", "Ines", "Joao")
LAST_NAMES = ("Almeida", "Barros", "Costa", "Duarte", "Esteves", "Ferreira", "Gomes", "Lopes")
PRODUCTS = {
    "books": ("Atlas", "Cookbook", "Crime Novel", "Poetry Reader", "Travel Guide"),
    "garden": ("Hose", "Rake", "Seed Kit", "Watering Can", "Plant Pot"),
    "kitchen": ("Kettle", "Chef Knife", "Frying Pan", "Teapot", "Blender"),
    "toys": ("Puzzle", "Kite", "Robot Kit", "Yo-yo", "Board Game"),
}
YEAR = 2025


@dataclass(frozen=True)
class ShopData:
    """All rows of one shop, as tuples in the schema's column order."""

    customers: tuple[tuple[int, str, str, str], ...]
    products: tuple[tuple[int, str, str, int], ...]
    orders: tuple[tuple[int, int, str, str], ...]
    order_items: tuple[tuple[int, int, int], ...]


def generate_shop(seed: int) -> ShopData:
    """Draws a shop from ``seed``.

    It has 8-10 customers (two of whom never order), 10-12 products, and 20-28 orders of one to
    three lines each.
    """
    rng = np.random.default_rng(seed)
    n_customers = int(rng.integers(8, 11))
    pairs = [(f, s) for f in FIRST_NAMES for s in LAST_NAMES]
    picked = rng.choice(len(pairs), size=n_customers, replace=False)
    customers = []
    for i, p in enumerate(picked, start=1):
        first, last = pairs[int(p)]
        signup = dt.date(YEAR - 1, 1, 1) + dt.timedelta(days=int(rng.integers(0, 365)))
        city = CITIES[int(rng.integers(len(CITIES)))]
        customers.append((i, f"{first} {last}", city, signup.isoformat()))

    catalogue = [(name, cat) for cat, names in PRODUCTS.items() for name in names]
    size = int(rng.integers(10, 13))
    chosen = sorted(int(i) for i in rng.choice(len(catalogue), size=size, replace=False))
    products = []
    for i, c in enumerate(chosen, start=1):
        name, category = catalogue[c]
        products.append((i, name, category, int(rng.integers(3, 100)) * 100 - 1))

    # The last two customers (in random order of ids) never order: "never ordered" questions
    # then always have an answer.
    buyers = [int(c) for c in rng.permutation(np.arange(1, n_customers + 1))[:-2]]
    orders, items = [], []
    for order_id in range(1, int(rng.integers(20, 29)) + 1):
        day = dt.date(YEAR, 1, 1) + dt.timedelta(days=int(rng.integers(0, 365)))
        customer = buyers[int(rng.integers(len(buyers)))]
        status = STATUSES[int(rng.integers(len(STATUSES)))]
        orders.append((order_id, customer, day.isoformat(), status))
        lines = rng.choice(len(products), size=int(rng.integers(1, 4)), replace=False)
        for p in sorted(int(x) for x in lines):
            items.append((order_id, p + 1, int(rng.integers(1, 6))))
    return ShopData(tuple(customers), tuple(products), tuple(orders), tuple(items))


def create_database(path: Path, data: ShopData) -> None:
    """Writes ``data`` as a new sqlite file at ``path`` (trusted code, run in-process)."""
    conn = sqlite3.connect(path)
    try:
        conn.executescript(SCHEMA)
        conn.executemany("INSERT INTO customers VALUES (?, ?, ?, ?)", data.customers)
        conn.executemany("INSERT INTO products VALUES (?, ?, ?, ?)", data.products)
        conn.executemany("INSERT INTO orders VALUES (?, ?, ?, ?)", data.orders)
        conn.executemany("INSERT INTO order_items VALUES (?, ?, ?)", data.order_items)
        conn.commit()
    finally:
        conn.close()


# ---- questions ----------------------------------------------------------------------------------

MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)


@dataclass(frozen=True)
class Question:
    """A question, the SQL that answers it, and whether row order is part of the answer."""

    text: str
    sql: str
    ordered: bool = False


def _pick(rng: np.random.Generator, values: list[str] | tuple[str, ...]) -> str:
    return values[int(rng.integers(len(values)))]


def count_customers_in_city(rng: np.random.Generator, shop: ShopData) -> Question:
    """How many customers live in a city (one number)."""
    city = _pick(rng, sorted({c[2] for c in shop.customers}))
    return Question(
        f"How many customers live in {city}? Return a single number.",
        f"SELECT COUNT(*) FROM customers WHERE city = '{city}'",
    )


def products_above_price(rng: np.random.Generator, shop: ShopData) -> Question:
    """Names of a category's products above a price (at least one qualifies)."""
    product = shop.products[int(rng.integers(len(shop.products)))]
    category, dollars = product[2], max(1, product[3] // 100 - int(rng.integers(0, 10)))
    return Question(
        f"List the names of the products in the '{category}' category that cost more than "
        f"{dollars} dollars. Return one column, the product name.",
        f"SELECT name FROM products WHERE category = '{category}' "
        f"AND price_cents > {dollars * 100}",
    )


def revenue_by_status(rng: np.random.Generator, shop: ShopData) -> Question:
    """Total revenue of the orders with a status, in cents."""
    status = _pick(rng, sorted({o[3] for o in shop.orders}))
    return Question(
        f"What is the total revenue, in cents, of the orders with status '{status}'? The revenue "
        "of an order line is its quantity times the product's price. Return a single number.",
        "SELECT SUM(oi.quantity * p.price_cents) FROM order_items oi "
        "JOIN products p ON p.product_id = oi.product_id "
        f"JOIN orders o ON o.order_id = oi.order_id WHERE o.status = '{status}'",
    )


def products_per_category(rng: np.random.Generator, shop: ShopData) -> Question:
    """Product count per category."""
    return Question(
        "For each product category, how many products does it have? Return two columns: the "
        "category and the number of products.",
        "SELECT category, COUNT(*) FROM products GROUP BY category",
    )


def top_customers(rng: np.random.Generator, shop: ShopData) -> Question:
    """The customers with most orders, ordered (ties by name)."""
    k = int(rng.integers(2, 5))
    return Question(
        f"Which {k} customers placed the most orders? Return the customer's name and their number "
        "of orders, ordered by the number of orders, most first; break ties by name in "
        "alphabetical order.",
        "SELECT c.name, COUNT(*) AS n FROM customers c JOIN orders o "
        "ON o.customer_id = c.customer_id GROUP BY c.customer_id "
        f"ORDER BY n DESC, c.name LIMIT {k}",
        ordered=True,
    )


def customers_without_orders(rng: np.random.Generator, shop: ShopData) -> Question:
    """Customers who never ordered."""
    return Question(
        "List the names of the customers who have never placed an order. Return one column.",
        "SELECT c.name FROM customers c LEFT JOIN orders o ON o.customer_id = c.customer_id "
        "WHERE o.order_id IS NULL",
    )


def best_selling_product(rng: np.random.Generator, shop: ShopData) -> Question:
    """The product with most units sold (first by name among ties)."""
    return Question(
        "Which product has sold the most units over all orders (sum of quantities)? Return only "
        "its name; if several tie, return the one whose name comes first alphabetically.",
        "SELECT p.name FROM products p JOIN order_items oi ON oi.product_id = p.product_id "
        "GROUP BY p.product_id ORDER BY SUM(oi.quantity) DESC, p.name LIMIT 1",
        ordered=True,
    )


def orders_in_month_from_city(rng: np.random.Generator, shop: ShopData) -> Question:
    """Ids of a month's orders by customers of a city (a pair that has at least one order)."""
    city_of = {c[0]: c[2] for c in shop.customers}
    pairs = Counter((int(o[2][5:7]), city_of[o[1]]) for o in shop.orders)
    month, city = sorted(pairs)[int(rng.integers(len(pairs)))]
    start = f"{YEAR}-{month:02d}-01"
    end = f"{YEAR + 1}-01-01" if month == 12 else f"{YEAR}-{month + 1:02d}-01"
    return Question(
        f"List the ids of the orders placed in {MONTHS[month - 1]} {YEAR} by customers who live "
        f"in {city}. Return one column, the order id.",
        "SELECT o.order_id FROM orders o JOIN customers c ON c.customer_id = o.customer_id "
        f"WHERE c.city = '{city}' AND o.order_date >= '{start}' AND o.order_date < '{end}'",
    )


def buyers_of_category(rng: np.random.Generator, shop: ShopData) -> Question:
    """Distinct customers who bought from a category."""
    category = _pick(rng, sorted({p[2] for p in shop.products}))
    return Question(
        f"How many different customers bought at least one product in the '{category}' "
        "category? Return a single number.",
        "SELECT COUNT(DISTINCT o.customer_id) FROM orders o "
        "JOIN order_items oi ON oi.order_id = o.order_id "
        f"JOIN products p ON p.product_id = oi.product_id WHERE p.category = '{category}'",
    )


def average_units_per_order(rng: np.random.Generator, shop: ShopData) -> Question:
    """Average units per order over a status, rounded to two decimals."""
    status = _pick(rng, sorted({o[3] for o in shop.orders}))
    return Question(
        f"Over the orders with status '{status}', what is the average number of units per order "
        "(the sum of an order's quantities, averaged over those orders)? Round to two decimals "
        "and return a single number.",
        "SELECT ROUND(AVG(units), 2) FROM (SELECT SUM(oi.quantity) AS units FROM orders o "
        f"JOIN order_items oi ON oi.order_id = o.order_id WHERE o.status = '{status}' "
        "GROUP BY o.order_id)",
    )


TEMPLATES: tuple[Callable[[np.random.Generator, ShopData], Question], ...] = (
    count_customers_in_city,
    products_above_price,
    revenue_by_status,
    products_per_category,
    top_customers,
    customers_without_orders,
    best_selling_product,
    orders_in_month_from_city,
    buyers_of_category,
    average_units_per_order,
)
