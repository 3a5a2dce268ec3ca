"""App registration refuses a wrong setup at import time, with a message that says what is wrong."""

from __future__ import annotations

from typing import Any

import pytest

import processor as p
from processor._app import HandlerKind


def _app() -> p.App:
    return p.App("shop")


def test_handlers_register_under_service_slash_name_with_their_kind() -> None:
    app = _app()
    orders, svc = app.virtual_object("order"), app.service("mail")

    @orders.handler()
    async def place(ctx: p.ObjectContext, order: Any) -> None: ...

    @orders.handler(shared=True, name="peek")
    async def look(ctx: p.ObjectSharedContext, _: Any) -> None: ...

    @svc.handler()
    async def send(ctx: p.Context, _: Any) -> None: ...

    kinds = {t: h.kind for t, h in app.handlers.items()}
    assert kinds == {"order/place": HandlerKind.EXCLUSIVE, "order/peek": HandlerKind.SHARED,
                     "mail/send": HandlerKind.SERVICE}
    app.subscribe("orders", place)
    assert app.bindings["orders"].handler.target == "order/place"


def test_a_plain_function_is_refused_as_a_handler() -> None:
    orders = _app().virtual_object("order")

    def place(ctx: p.ObjectContext, order: Any) -> None: ...

    with pytest.raises(p.ConfigurationError, match=r"place must be an `async def` function"):
        orders.handler()(place)


def test_an_async_generator_is_refused_as_a_handler() -> None:
    svc = _app().service()

    async def stream(ctx: p.Context, _: Any) -> Any:
        yield 1

    with pytest.raises(p.ConfigurationError, match="async def"):
        svc.handler()(stream)


def test_two_handlers_with_one_name_on_one_object_are_refused() -> None:
    orders = _app().virtual_object("order")

    @orders.handler()
    async def place(ctx: p.ObjectContext, _: Any) -> None: ...

    async def other(ctx: p.ObjectContext, _: Any) -> None: ...

    with pytest.raises(p.ConfigurationError, match="order/place is registered twice"):
        orders.handler(name="place")(other)


def test_the_same_handler_name_on_two_objects_is_fine() -> None:
    app = _app()

    @app.virtual_object("order").handler()
    async def place(ctx: p.ObjectContext, _: Any) -> None: ...

    @app.virtual_object("cart").handler(name="place")
    async def place_cart(ctx: p.ObjectContext, _: Any) -> None: ...

    assert set(app.handlers) == {"order/place", "cart/place"}


def test_two_definitions_with_one_name_are_refused() -> None:
    app = _app()
    app.virtual_object("order")
    with pytest.raises(p.ConfigurationError, match="'order' is already defined on app 'shop'"):
        app.service("order")


@pytest.mark.parametrize("name", ["", "has space", "-leading", "a/b"])
def test_names_that_cannot_name_kafka_topics_are_refused(name: str) -> None:
    with pytest.raises(p.ConfigurationError, match="must match"):
        p.App(name)
    with pytest.raises(p.ConfigurationError, match="must match"):
        _app().virtual_object(name)


def test_an_unknown_app_option_is_refused_naming_it() -> None:
    with pytest.raises(p.ConfigurationError, match="retension"):
        p.App("shop", retension=1)


def test_binding_a_function_that_is_not_a_registered_handler_is_refused() -> None:
    app = _app()

    async def place(ctx: p.ObjectContext, _: Any) -> None: ...

    with pytest.raises(p.ConfigurationError, match="is not a handler registered on app 'shop'"):
        app.subscribe("orders", place)
    with pytest.raises(p.ConfigurationError, match="not a handler"):
        app.subscribe("orders", print)  # type: ignore[arg-type]


def test_a_handler_of_another_app_cannot_be_bound() -> None:
    other = p.App("other")

    @other.service().handler()
    async def send(ctx: p.Context, _: Any) -> None: ...

    with pytest.raises(p.ConfigurationError, match="not a handler registered on app 'shop'"):
        _app().subscribe("mails", send)


def test_a_topic_can_be_bound_to_one_handler_only() -> None:
    app = _app()
    orders = app.virtual_object("order")

    @orders.handler()
    async def place(ctx: p.ObjectContext, _: Any) -> None: ...

    @orders.handler()
    async def cancel(ctx: p.ObjectContext, _: Any) -> None: ...

    app.subscribe("orders", place)
    with pytest.raises(p.ConfigurationError, match="'orders' is already bound to order/place"):
        app.subscribe("orders", cancel)


@pytest.mark.parametrize("suffix", ["inbox", "changelog", "dlq"])
def test_an_internal_topic_cannot_be_bound(suffix: str) -> None:
    app = _app()

    @app.service().handler()
    async def send(ctx: p.Context, _: Any) -> None: ...

    with pytest.raises(p.ConfigurationError, match="internal topic"):
        app.subscribe(f"shop.{suffix}", send)
