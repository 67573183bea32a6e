//! Connection URLs as they may appear in logs and errors: without their
//! passwords.

/// `url` with any password (and a token in the user part of a `nats://`
/// or `redis://` URL) replaced by `***`; text that is not a URL is kept.
pub fn url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        // `nats://token@host` and `redis://:secret@host` forms: a user part
        // with no password may itself be the secret.
        Ok(mut parsed)
            if !parsed.username().is_empty() && !parsed.scheme().starts_with("postgres") =>
        {
            let _ = parsed.set_username("***");
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}

/// `text` with every occurrence of a URL's password replaced by `***`:
/// for error messages of libraries that quote the URL they were given.
pub fn in_text(text: &str, url: &str) -> String {
    match url::Url::parse(url) {
        Ok(parsed) => match parsed.password() {
            Some(password) if !password.is_empty() => text.replace(password, "***"),
            _ => text.to_string(),
        },
        Err(_) => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_never_show() {
        for (given, shown) in [
            (
                "postgres://copilot_command:s3cret@db.example.com:5432/copilot",
                "postgres://copilot_command:***@db.example.com:5432/copilot",
            ),
            ("redis://:hunter2@cache:6379", "redis://:***@cache:6379"),
            (
                "rediss://user:pw@cache:6380/0",
                "rediss://user:***@cache:6380/0",
            ),
            ("nats://agent:pw@bus:4222", "nats://agent:***@bus:4222"),
            ("nats://s3cr3ttoken@bus:4222", "nats://***@bus:4222"),
            (
                "postgres://postgres@127.0.0.1/copilot",
                "postgres://postgres@127.0.0.1/copilot",
            ),
            ("not a url", "not a url"),
        ] {
            assert_eq!(super::url(given), shown, "{given}");
        }
        assert_eq!(
            super::in_text(
                "connect to postgres://u:s3cret@h/db failed",
                "postgres://u:s3cret@h/db"
            ),
            "connect to postgres://u:***@h/db failed"
        );
    }
}
