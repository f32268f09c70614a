"""A thread's database connection is closed when the thread ends
(openai_django/thread_connections.py): a server that retires idle threads leaves no connection
open behind them."""

import gc
import sqlite3
import threading

import pytest
from django.core.signals import request_finished
from django.db import connection, connections

from openai_django import thread_connections

pytestmark = pytest.mark.django_db(transaction=True)


def _in_a_thread(work):
    seen = {}

    def run():
        seen["result"] = work()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return seen["result"]


def _closed(raw):
    try:
        raw.cursor().execute("SELECT 1")
    except (sqlite3.ProgrammingError, Exception) as exc:  # psycopg: OperationalError
        return "closed" in str(exc).lower()
    return False


def test_the_connection_of_an_ended_thread_is_closed_without_a_collection():
    gc.disable()  # not by the collector: when the thread ends
    try:
        def work():
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
            return connection.connection  # the DB-API connection of this thread

        raw = _in_a_thread(work)
        assert raw is not None and raw in thread_connections._orphans
        assert not _closed(raw)  # not in the ending thread itself
        request_finished.send(sender=None)  # the next request to finish, in this thread
        assert _closed(raw) and raw not in thread_connections._orphans
    finally:
        gc.enable()


def test_a_connection_shared_with_another_thread_stays_open():
    def work():
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        connection.inc_thread_sharing()  # as a test's live server shares its connection
        return connections["default"]

    wrapper = _in_a_thread(work)
    try:
        assert not _closed(wrapper.connection)
    finally:
        wrapper.dec_thread_sharing()
        wrapper.connection.close()


def test_the_main_thread_is_left_alone():
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    assert not _closed(connection.connection)
