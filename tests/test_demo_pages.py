"""The demo site's pages say which upstream they use."""

import pytest


@pytest.mark.django_db
def test_home_page_names_the_standin_upstream(client, settings):
    settings.OPENAI_DJANGO = {"BASE_URL": "http://127.0.0.1:9/v1", "API_KEY": None}
    settings.OPENAI_DJANGO_STANDIN = True
    page = client.get("/").content.decode()
    assert "Offline demo" in page and "http://127.0.0.1:9/v1" in page
    assert "openai_apikey" in page and "/admin/" in page and "/v1/openapi.yaml" in page


@pytest.mark.django_db
def test_home_page_with_a_real_upstream(client, settings):
    settings.OPENAI_DJANGO = {"BASE_URL": "https://api.example.test/v1", "API_KEY": "sk-x"}
    settings.OPENAI_DJANGO_STANDIN = False
    page = client.get("/").content.decode()
    assert "Offline demo" not in page and "https://api.example.test/v1" in page
    assert "sk-x" not in page


@pytest.mark.django_db
def test_admin_pages_say_when_the_standin_is_used(admin_client, settings):
    settings.OPENAI_DJANGO = {"BASE_URL": "http://127.0.0.1:9/v1", "API_KEY": None}
    settings.OPENAI_DJANGO_STANDIN = True
    assert "local stand-in upstream" in admin_client.get("/admin/").content.decode()
