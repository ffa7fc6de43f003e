//! How a value someone gave us is quoted back in a message: bounded, so a 100 KB flag or request
//! field cannot overflow a gRPC status or flood a terminal, and with control characters escaped,
//! so it cannot rewrite the screen it is printed on.

/// Characters of a value quoted in full; longer values are cut there and marked.
pub const ECHO_CHARS: usize = 80;

/// `s` as it is quoted in an error message: at most [`ECHO_CHARS`] characters (then `…` and the
/// full length), control characters escaped.
pub fn echo(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars().take(ECHO_CHARS) {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    let n = s.chars().count();
    if n > ECHO_CHARS {
        out.push_str(&format!("… ({n} characters)"));
    }
    out
}

/// `text` (a whole message, e.g. a command-line parser's) with every word longer than twice
/// [`ECHO_CHARS`] quoted as [`echo`] quotes it, so a message that repeats a huge value stays
/// bounded however it was built. (Twice: a value already quoted by [`echo`], with the quotes
/// and punctuation around it, is left as it is.)
pub fn bound_words(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(4096));
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if word.chars().count() > 2 * ECHO_CHARS {
            out.push_str(&echo(word));
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in text.chars() {
        if c.is_whitespace() {
            flush(&mut word, &mut out);
            out.push(c);
        } else {
            word.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_with_huge_words_are_bounded() {
        let m = format!(
            "error: invalid value '{}' for '--to <TO>'\n",
            "dp1".repeat(40_000)
        );
        let b = bound_words(&m);
        assert!(b.len() < 200, "{b}");
        assert!(b.starts_with("error: invalid value '"), "{b}");
        assert!(b.contains("for '--to <TO>'"), "{b}");
        assert_eq!(bound_words("short words stay"), "short words stay");
        // A value echo() already cut is not cut again.
        let once = format!("`{}`", echo(&"x".repeat(1000)));
        assert_eq!(bound_words(&once), once);
    }

    #[test]
    fn short_values_are_quoted_whole() {
        assert_eq!(echo("dp2tp2ep4"), "dp2tp2ep4");
    }

    #[test]
    fn long_values_are_cut_and_say_how_long_they_were() {
        let long = "x".repeat(100_000);
        let e = echo(&long);
        assert!(e.len() < 120, "{e}");
        assert!(e.ends_with("… (100000 characters)"), "{e}");
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(echo("a\u{1b}[2Jb\n"), "a\\u{1b}[2Jb\\n");
    }
}
