"""Client keys in the admin: created with the secret shown once, revoked, never shown again;
and the admins mounted on a site's own AdminSite."""

import re

import pytest
from django.contrib import admin
from django.test import Client
from django.urls import path

from openai_django.admin import register
from openai_django.models import APIKey, hash_key

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("clean_cache")]

KEYS = "/admin/openai_django/apikey/"


def test_create_shows_the_secret_once(admin_client, user):
    response = admin_client.post(f"{KEYS}add/", {"user": user.pk, "name": "billing job",
                                                 "metadata_only": "on"})
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    text = response.content.decode()
    secret = re.search(r'id="od-new-key">(sk-od-[^<]+)<', text)[1]
    key = APIKey.objects.get()
    assert key.hashed_key == hash_key(secret) and key.name == "billing job"
    assert key.metadata_only and key.user == user
    assert secret not in str(APIKey.objects.values().get())  # only the hash is stored
    # Never again: not on the list, the change page, nor in the messages.
    for url in (KEYS, f"{KEYS}{key.pk}/change/", "/admin/openai_django/call/"):
        page = admin_client.get(url).content.decode()
        assert secret not in page and secret[len(key.prefix):-4] not in page
    assert key.masked in admin_client.get(KEYS).content.decode()
    # The key works against the gateway.
    assert key.is_active


def test_the_new_key_authenticates(admin_client, user, gateway):
    import requests

    text = admin_client.post(f"{KEYS}add/", {"user": user.pk, "name": "x"}).content.decode()
    secret = re.search(r'id="od-new-key">(sk-od-[^<]+)<', text)[1]
    answer = requests.get(f"{gateway}/models", headers={"Authorization": f"Bearer {secret}"},
                          timeout=10)
    assert answer.status_code == 200
    key = APIKey.objects.get()
    assert key.last_used_at is not None
    row = admin_client.get(KEYS).content.decode()
    assert key.last_used_at.strftime("%Y") in row.split("field-last_used_at", 1)[1][:120]


def test_edit_name_and_revoke_with_confirmation(admin_client, user):
    key, raw = APIKey.generate(user, name="old name")
    change = admin_client.get(f"{KEYS}{key.pk}/change/").content.decode()
    assert "Revoke" in change and key.masked in change and raw not in change
    assert "hashed" not in change.lower() or key.hashed_key not in change
    admin_client.post(f"{KEYS}{key.pk}/change/", {"name": "new name", "expires_at_0": "",
                                                  "expires_at_1": ""})
    key.refresh_from_db()
    assert key.name == "new name" and key.revoked_at is None
    confirm = admin_client.get(f"{KEYS}{key.pk}/revoke/")
    assert "Yes, revoke it" in confirm.content.decode()
    key.refresh_from_db()
    assert key.revoked_at is None  # GET never revokes
    response = admin_client.post(f"{KEYS}{key.pk}/revoke/", follow=True)
    key.refresh_from_db()
    assert key.revoked_at is not None and not key.is_active
    assert "is revoked" in response.content.decode()
    assert "revoked" in admin_client.get(f"{KEYS}?state=revoked").content.decode()


def test_bulk_revoke_asks_first(admin_client, user):
    keys = [APIKey.generate(user, name=f"k{i}")[0] for i in range(2)]
    ids = [str(k.pk) for k in keys]
    confirm = admin_client.post(KEYS, {"action": "revoke_selected", "index": 0,
                                       "_selected_action": ids})
    assert "Revoke these 2 keys?" in confirm.content.decode()
    assert APIKey.objects.active().count() == 2
    admin_client.post(KEYS, {"action": "revoke_selected", "post": "yes",
                             "_selected_action": ids})
    assert APIKey.objects.active().count() == 0


def test_keys_are_never_deleted_from_the_admin(admin_client, user):
    key, _raw = APIKey.generate(user)
    assert admin_client.get(f"{KEYS}{key.pk}/delete/").status_code == 403
    assert "delete_selected" not in admin_client.get(KEYS).content.decode()


def test_revoke_needs_change_permission(client, user):
    from django.contrib.auth.models import Permission

    key, _raw = APIKey.generate(user)
    user.is_staff = True
    user.save()
    user.user_permissions.add(Permission.objects.get(codename="view_apikey"))
    client.force_login(user)
    assert client.get(f"{KEYS}{key.pk}/change/").status_code == 200
    assert client.post(f"{KEYS}{key.pk}/revoke/").status_code == 403
    key.refresh_from_db()
    assert key.revoked_at is None


# -- a site with its own AdminSite ----------------------------------------------------------

site = admin.AdminSite(name="backoffice")
register(site)
urlpatterns = [path("backoffice/", site.urls)]


@pytest.mark.urls("tests.test_admin_keys")
def test_admins_mount_on_a_custom_admin_site(admin_user, user):
    from openai_django.models import Call

    call = Call.objects.create(operation="listModels", method="GET", path="/models", user=user)
    client = Client()
    client.force_login(admin_user)
    base = "/backoffice/openai_django/call/"
    listing = client.get(base)
    assert listing.status_code == 200
    assert f"{base}{call.pk}/change/" in listing.content.decode()
    assert f"{base}usage/" in listing.content.decode()
    detail = client.get(f"{base}{call.pk}/change/")
    assert detail.status_code == 200 and f"{base}{call.pk}/replay/" in detail.content.decode()
    assert client.get(f"{base}usage/").status_code == 200
    assert client.get("/backoffice/openai_django/apikey/add/").status_code == 200
