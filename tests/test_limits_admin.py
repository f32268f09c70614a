"""Budgets and rate limits in the admin: the inline on the key, user and group pages (the
site's own UserAdmin/GroupAdmin extended, not replaced), the key page's spend against its
budgets, the allowance list and the usage dashboard's budget table."""

import re
from decimal import Decimal

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.models import Group

import openai_django
from openai_django.models import Allowance, APIKey, BudgetWindow

pytestmark = pytest.mark.django_db


@pytest.fixture
def key(user):
    return APIKey.generate(user, name="k")[0]


def inline_management(prefix, total=0, initial=0):
    return {f"{prefix}-TOTAL_FORMS": str(total), f"{prefix}-INITIAL_FORMS": str(initial),
            f"{prefix}-MIN_NUM_FORMS": "0", f"{prefix}-MAX_NUM_FORMS": "1"}


def test_user_and_group_admins_are_extended_not_replaced():
    user_admin = admin.site._registry[get_user_model()]
    group_admin = admin.site._registry[Group]
    assert isinstance(user_admin, UserAdmin) and isinstance(group_admin, GroupAdmin)
    from openai_django.admin import GroupAllowanceInline, UserAllowanceInline

    assert UserAllowanceInline in type(user_admin).inlines
    assert GroupAllowanceInline in type(group_admin).inlines
    # Idempotent: a second extension adds nothing.
    from openai_django.admin.allowances import extend_user_admins

    extend_user_admins(admin.site)
    assert type(admin.site._registry[get_user_model()]).inlines.count(UserAllowanceInline) == 1


def test_site_with_its_own_user_admin_keeps_it():
    """A site's own UserAdmin subclass stays what it is, with the inline added."""
    from django.contrib.admin import AdminSite

    from openai_django.admin import register

    class SiteUserAdmin(UserAdmin):
        list_display = ("username", "email")

    site = AdminSite(name="own")
    site.register(get_user_model(), SiteUserAdmin)
    register(site)
    registered = site._registry[get_user_model()]
    assert isinstance(registered, SiteUserAdmin)
    assert registered.list_display == ("username", "email")
    assert any(i.__name__ == "UserAllowanceInline" for i in type(registered).inlines)


def test_key_page_edits_budget_and_shows_spend(admin_client, key):
    url = f"/admin/openai_django/apikey/{key.pk}/change/"
    page = admin_client.get(url).content.decode()
    assert "budget and rate limits" in page.lower()
    assert "No budget applies to this key" in page
    data = {"name": "k", "expires_at_0": "", "expires_at_1": "",
            **inline_management("allowance", total=1),
            "allowance-0-requests_per_minute": "60", "allowance-0-tokens_per_minute": "",
            "allowance-0-daily_usd": "", "allowance-0-daily_tokens": "",
            "allowance-0-monthly_usd": "12.5", "allowance-0-monthly_tokens": "",
            "allowance-0-total_usd": "", "allowance-0-total_tokens": "100000",
            "allowance-0-api_key": str(key.pk)}
    response = admin_client.post(url, data)
    assert response.status_code == 302, response.content.decode()[:3000]
    allowance = Allowance.objects.get(api_key=key)
    assert allowance.requests_per_minute == 60 and allowance.monthly_usd == Decimal("12.5")
    assert allowance.total_tokens == 100000
    # Spend against the budget this period, on the key's page.
    openai_django.spend(key)
    BudgetWindow.objects.create(allowance=allowance, period="monthly",
                                start=openai_django.spend(key)[0]["start"],
                                spent_usd=Decimal("3.125"), calls=4)
    page = admin_client.get(url).content.decode()
    text = re.sub(r"\s+", " ", page)
    assert "$3.1250 of $12.5000" in text
    assert "0 of 100,000 tokens" in text
    assert 'style="width: 25.0%"' in page


def test_key_page_shows_the_user_and_group_budgets_that_apply(admin_client, key, user):
    team = Group.objects.create(name="team-a")
    team.user_set.add(user)
    openai_django.set_budget(user, daily_tokens=5000)
    openai_django.set_budget(team, monthly_usd=100)
    page = admin_client.get(f"/admin/openai_django/apikey/{key.pk}/change/").content.decode()
    assert "user alice" in page and "group team-a" in page
    assert "0 of 5,000 tokens" in page and "$0.0000 of $100.0000" in page


def test_user_page_inline_saves(admin_client, user):
    url = f"/admin/auth/user/{user.pk}/change/"
    page = admin_client.get(url).content.decode()
    assert 'name="openai_allowance-TOTAL_FORMS"' in page
    data = {"username": "alice", "password": user.password, "is_active": "on",
            "date_joined_0": "2024-01-01", "date_joined_1": "00:00:00",
            "last_login_0": "", "last_login_1": "",
            **inline_management("openai_allowance", total=1),
            "openai_allowance-0-daily_usd": "1.5", "openai_allowance-0-tokens_per_minute": "900",
            "openai_allowance-0-user": str(user.pk)}
    response = admin_client.post(url, data)
    assert response.status_code == 302, re.findall(r'errorlist[^<]*<li>([^<]*)',
                                                    response.content.decode())
    allowance = Allowance.objects.get(user=user)
    assert allowance.daily_usd == Decimal("1.5") and allowance.tokens_per_minute == 900


def test_group_page_inline_saves(admin_client):
    team = Group.objects.create(name="team-b")
    url = f"/admin/auth/group/{team.pk}/change/"
    assert 'name="openai_allowance-TOTAL_FORMS"' in admin_client.get(url).content.decode()
    data = {"name": "team-b", **inline_management("openai_allowance", total=1),
            "openai_allowance-0-requests_per_minute": "120",
            "openai_allowance-0-group": str(team.pk)}
    response = admin_client.post(url, data)
    assert response.status_code == 302
    assert Allowance.objects.get(group=team).requests_per_minute == 120


def test_usage_dashboard_shows_spend_against_budgets(admin_client, user):
    allowance = openai_django.set_budget(user, daily_tokens=1000)
    BudgetWindow.objects.create(allowance=allowance, period="daily",
                                start=openai_django.spend(user)[0]["start"], spent_tokens=1000,
                                calls=7)
    page = admin_client.get("/admin/openai_django/call/usage/").content.decode()
    text = re.sub(r"\s+", " ", page)
    assert "Budgets" in text and "user alice" in text
    assert "1,000 of 1,000 tokens" in text and "od-over" in page


def test_allowance_list_and_check_constraint(admin_client, user):
    openai_django.set_rate_limit(user, requests_per_minute=5)
    page = admin_client.get("/admin/openai_django/allowance/").content.decode()
    assert "user alice" in page
    from django.db import IntegrityError, transaction

    with pytest.raises(IntegrityError), transaction.atomic():
        Allowance.objects.create()  # no subject


def test_allowance_change_page(admin_client, user):
    allowance = openai_django.set_budget(user, monthly_usd=3)
    page = admin_client.get(f"/admin/openai_django/allowance/{allowance.pk}/change/")
    assert page.status_code == 200
    assert "$0.0000 of $3.0000" in page.content.decode()
