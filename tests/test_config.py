import pytest

from service.config import ConfigError, WebSettings, load_settings, load_web_settings

GOOD = {
    "SIGNALWIRE_SPACE": "example.signalwire.com",
    "SIGNALWIRE_PROJECT_ID": "6bfbbe86-a901-4197-8759-2a0de1fa319d",
    "SIGNALWIRE_API_TOKEN": "PTsecret-api-token-value",
    "SIGNALWIRE_SIGNING_KEY": "PSK_old_key_value, PSK_new_key_value",
    "PUBLIC_BASE_URL": "https://recordings.example.com/",
    "SERVICE_API_TOKEN": "service-token-0123456789",
    "REDIS_URL": "rediss://:pw@redis.example.com:6380",
    "DATABASE_URL": "postgres://u:p@db.example.com:5432/d",
}


def test_good_environment_loads_every_setting():
    settings = load_settings(GOOD)
    assert settings.signalwire_signing_keys == ("PSK_old_key_value", "PSK_new_key_value")
    assert settings.public_base_url == "https://recordings.example.com"
    assert settings.callback_url == "https://recordings.example.com/webhooks/recording-status"
    assert settings.redis_url.startswith("rediss://")
    assert settings.database_url.startswith("postgres://")
    assert settings.port == 5000 and settings.web_concurrency == 2


def test_every_problem_is_named_in_one_error():
    with pytest.raises(ConfigError) as info:
        load_settings({"PORT": "eighty", "PUBLIC_BASE_URL": "not a url", "DATABASE_URL": "mysql://x/y"})
    message = str(info.value)
    for name in ("SIGNALWIRE_SPACE", "SIGNALWIRE_PROJECT_ID", "SIGNALWIRE_API_TOKEN", "SIGNALWIRE_SIGNING_KEY",
                 "SERVICE_API_TOKEN", "REDIS_URL", "PORT", "PUBLIC_BASE_URL", "DATABASE_URL"):
        assert name in message, name
    assert len(info.value.problems) == 9


def test_secrets_never_appear_in_errors_or_repr():
    bad = dict(GOOD, PORT="x", SERVICE_API_TOKEN="short")
    with pytest.raises(ConfigError) as info:
        load_settings(bad)
    settings = load_settings(GOOD)
    for secret in ("PTsecret-api-token-value", "PSK_old_key_value", "short"):
        assert secret not in str(info.value).replace("SERVICE_API_TOKEN must", "")
        assert secret not in repr(settings)


def test_several_api_tokens_for_a_rotation_each_at_least_16_characters():
    settings = load_settings(dict(GOOD, SERVICE_API_TOKEN=" old-token-0123456789 , new-token-0123456789,"))
    assert settings.service_api_tokens == ("old-token-0123456789", "new-token-0123456789")
    assert "old-token-0123456789" in settings.secrets and "new-token-0123456789" in settings.secrets
    with pytest.raises(ConfigError, match="1 of 2 not") as info:
        load_settings(dict(GOOD, SERVICE_API_TOKEN="old-token-0123456789,tiny-token"))
    assert "tiny-token" not in str(info.value) and "old-token" not in str(info.value)
    with pytest.raises(ConfigError, match="SERVICE_API_TOKEN is not set"):
        load_settings(dict(GOOD, SERVICE_API_TOKEN=" , "))


def test_signing_key_required_unless_explicitly_opted_out():
    without = {k: v for k, v in GOOD.items() if k != "SIGNALWIRE_SIGNING_KEY"}
    with pytest.raises(ConfigError, match="SIGNALWIRE_SIGNING_KEY"):
        load_settings(without)
    settings = load_settings(dict(without, ALLOW_UNSIGNED_WEBHOOKS="true"))
    assert settings.allow_unsigned_webhooks and settings.signalwire_signing_keys == ()


def test_database_defaults_to_sqlite_in_instance_folder():
    settings = load_settings({k: v for k, v in GOOD.items() if k != "DATABASE_URL"})
    assert settings.database_url.startswith("sqlite:///") and "instance" in settings.database_url


def test_space_may_be_a_full_base_url():
    assert load_settings(dict(GOOD, SIGNALWIRE_SPACE="http://127.0.0.1:8123")).signalwire_space == "http://127.0.0.1:8123"
    with pytest.raises(ConfigError, match="SIGNALWIRE_SPACE"):
        load_settings(dict(GOOD, SIGNALWIRE_SPACE="ftp://nope"))


def test_url_passwords_are_masked_in_repr_and_are_secrets():
    settings = load_settings(dict(GOOD, REDIS_URL="rediss://:redis-pass-1234@redis.example.com:6380",
                                  DATABASE_URL="postgres://u:db%40pass-5678@db.example.com:5432/d"))
    shown = repr(settings)
    assert "redis_url='rediss://:***@redis.example.com:6380'" in shown
    assert "database_url='postgres://u:***@db.example.com:5432/d'" in shown
    assert "pass-1234" not in shown and "pass-5678" not in shown
    # The percent-encoded form is what a logged URL shows, the decoded one what a driver uses.
    assert {"redis-pass-1234", "db%40pass-5678", "db@pass-5678"} <= set(settings.secrets)
    sqlite = load_settings({k: v for k, v in GOOD.items() if k != "DATABASE_URL"})
    assert f"database_url={sqlite.database_url!r}" in repr(sqlite)  # no password: shown as is


def test_space_over_plain_http_only_on_loopback():
    for space in ("http://127.0.0.1:8123", "http://localhost:8123", "http://[::1]:8123", "https://sw.example.com"):
        assert load_settings(dict(GOOD, SIGNALWIRE_SPACE=space)).signalwire_space == space
    for space in ("http://example.signalwire.com", "HTTP://example.signalwire.com", "http://10.0.0.5:8123",
                  "http://127.0.0.1.example.com"):
        with pytest.raises(ConfigError) as info:
            load_settings(dict(GOOD, SIGNALWIRE_SPACE=space))
        assert len(info.value.problems) == 1 and info.value.problems[0].startswith("SIGNALWIRE_SPACE must use https")


@pytest.mark.parametrize("url", ["https://r.example.com/?tenant=1", "https://r.example.com/app#top",
                                 "https://r.example.com/?"])
def test_public_base_url_with_query_or_fragment_is_refused(url):
    with pytest.raises(ConfigError) as info:
        load_settings(dict(GOOD, PUBLIC_BASE_URL=url))
    assert info.value.problems == ["PUBLIC_BASE_URL must not have a query string (?) or a fragment (#)"]


def test_pool_settings_have_defaults_and_are_checked():
    settings = load_settings(GOOD)
    assert (settings.database_pool_size, settings.database_max_overflow) == (3, 3)
    settings = load_settings(dict(GOOD, DATABASE_POOL_SIZE="10", DATABASE_MAX_OVERFLOW="0"))
    assert (settings.database_pool_size, settings.database_max_overflow) == (10, 0)
    with pytest.raises(ConfigError) as info:
        load_settings(dict(GOOD, DATABASE_POOL_SIZE="0", DATABASE_MAX_OVERFLOW="-1"))
    assert info.value.problems == ["DATABASE_POOL_SIZE must be at least 1 (got 0)",
                                   "DATABASE_MAX_OVERFLOW must be at least 0 (got -1)"]


def test_web_settings_have_defaults_and_are_checked():
    settings = load_settings(dict(GOOD, GUNICORN_THREADS="8"))
    assert (settings.port, settings.web_concurrency, settings.gunicorn_threads) == (5000, 2, 8)
    with pytest.raises(ConfigError) as info:
        load_settings(dict(GOOD, WEB_CONCURRENCY="0", GUNICORN_THREADS="x", PORT="65536"))
    assert info.value.problems == [
        "PORT must be at most 65535 (got 65536)",
        "WEB_CONCURRENCY must be at least 1 (got 0)",
        "GUNICORN_THREADS must be a whole number (got 'x')",
    ]


def test_web_settings_are_checked_alone_as_the_full_check_does():
    """gunicorn's configuration reads these before the app checks the rest."""
    assert load_web_settings({}) == WebSettings(port=5000, web_concurrency=2, gunicorn_threads=16)
    web = load_web_settings({"PORT": "8080", "WEB_CONCURRENCY": "4", "GUNICORN_THREADS": "8"})
    assert (web.port, web.web_concurrency, web.gunicorn_threads) == (8080, 4, 8)
    bad = {"WEB_CONCURRENCY": "abc", "GUNICORN_THREADS": "0"}
    with pytest.raises(ConfigError) as alone:
        load_web_settings(bad)
    with pytest.raises(ConfigError) as full:
        load_settings(dict(GOOD, **bad))
    assert alone.value.problems == full.value.problems == [
        "WEB_CONCURRENCY must be a whole number (got 'abc')", "GUNICORN_THREADS must be at least 1 (got 0)"]


def test_media_archive_is_off_unless_a_storage_url_is_set():
    settings = load_settings(GOOD)
    assert settings.media_storage_url is None and not settings.media_delete_after_archive
    settings = load_settings(dict(GOOD, MEDIA_STORAGE_URL="s3://team-recordings/calls/", MEDIA_FORMAT="MP3",
                                  MEDIA_DELETE_AFTER_ARCHIVE="true", MEDIA_VERIFY="read"))
    assert settings.media_storage_url == "s3://team-recordings/calls/"
    assert (settings.media_format, settings.media_delete_after_archive, settings.media_verify) == ("mp3", True, "read")
    assert load_settings(dict(GOOD, MEDIA_STORAGE_URL="file:///srv/media")).media_verify == "checksum"


@pytest.mark.parametrize("env, named", [
    ({"MEDIA_STORAGE_URL": "s3://A_Bad_Bucket/x"}, "MEDIA_STORAGE_URL"),
    ({"MEDIA_STORAGE_URL": "file://relative/path"}, "MEDIA_STORAGE_URL"),
    ({"MEDIA_STORAGE_URL": "file:///"}, "MEDIA_STORAGE_URL"),
    ({"MEDIA_STORAGE_URL": "gs://bucket"}, "MEDIA_STORAGE_URL"),
    ({"MEDIA_STORAGE_URL": "s3://bucket/x?versioning=1"}, "MEDIA_STORAGE_URL"),
    ({"MEDIA_STORAGE_URL": "file:///srv/m", "MEDIA_FORMAT": "ogg"}, "MEDIA_FORMAT"),
    ({"MEDIA_STORAGE_URL": "file:///srv/m", "MEDIA_VERIFY": "trust"}, "MEDIA_VERIFY"),
    ({"MEDIA_DELETE_AFTER_ARCHIVE": "true"}, "MEDIA_DELETE_AFTER_ARCHIVE"),
    ({"MEDIA_STORAGE_URL": "file:///srv/m", "MEDIA_DELETE_AFTER_ARCHIVE": "maybe"}, "MEDIA_DELETE_AFTER_ARCHIVE"),
])
def test_bad_media_settings_are_named(env, named):
    with pytest.raises(ConfigError) as info:
        load_settings(dict(GOOD, **env))
    assert len(info.value.problems) == 1 and named in info.value.problems[0]


def test_storage_secret_is_redacted_but_never_shown():
    settings = load_settings(dict(GOOD, MEDIA_STORAGE_URL="s3://bucket-name", AWS_ACCESS_KEY_ID="id",
                                  AWS_SECRET_ACCESS_KEY="aws-secret-value"))
    assert "aws-secret-value" in settings.secrets
    assert "aws-secret-value" not in repr(settings)


def test_s3_variables_are_checked_for_an_s3_storage_only():
    s3 = dict(GOOD, MEDIA_STORAGE_URL="s3://team-audio")
    load_settings(dict(s3, AWS_ENDPOINT_URL="https://acct.r2.cloudflarestorage.com", AWS_REGION="auto",
                       AWS_ACCESS_KEY_ID="id", AWS_SECRET_ACCESS_KEY="secret"))
    with pytest.raises(ConfigError) as info:
        load_settings(dict(s3, AWS_ENDPOINT_URL="minio:9000", AWS_ACCESS_KEY_ID="id", AWS_REGION="us east"))
    assert [p.split()[0] for p in info.value.problems] == ["AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_REGION"]
    load_settings(dict(GOOD, MEDIA_STORAGE_URL="file:///srv/media", AWS_ENDPOINT_URL="minio:9000"))
