//! Redis's glob patterns (`KEYS`, `SCAN ... MATCH`, `HSCAN ... MATCH`).

/// Whether `key` matches the glob `pattern` (Redis's `*`, `?`, `[...]`
/// with ranges and `^`, and `\\` escapes). Linear backtracking to the last
/// `*` only, so no pattern takes more than pattern × key steps.
pub fn glob_match(pattern: &[u8], key: &[u8]) -> bool {
    let tokens = glob_tokens(pattern);
    let (mut token, mut position) = (0, 0);
    let mut last_star: Option<(usize, usize)> = None;
    while position < key.len() {
        match tokens.get(token) {
            Some(GlobToken::Star) => {
                last_star = Some((token, position));
                token += 1;
                continue;
            }
            Some(single) if single.matches(key[position]) => {
                token += 1;
                position += 1;
                continue;
            }
            _ => {}
        }
        let Some((star, from)) = last_star else {
            return false;
        };
        last_star = Some((star, from + 1));
        token = star + 1;
        position = from + 1;
    }
    tokens[token..].iter().all(|t| *t == GlobToken::Star)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum GlobToken<'a> {
    Star,
    AnyByte,
    Byte(u8),
    Class(&'a [u8]),
}

impl GlobToken<'_> {
    fn matches(self, byte: u8) -> bool {
        match self {
            Self::Star | Self::AnyByte => true,
            Self::Byte(expected) => expected == byte,
            Self::Class(class) => class_matches(class, byte),
        }
    }
}

fn glob_tokens(mut pattern: &[u8]) -> Vec<GlobToken<'_>> {
    let mut tokens = Vec::with_capacity(pattern.len());
    while let Some((&first, rest)) = pattern.split_first() {
        let (token, rest) = match first {
            b'*' => (GlobToken::Star, rest),
            b'?' => (GlobToken::AnyByte, rest),
            b'\\' if !rest.is_empty() => (GlobToken::Byte(rest[0]), &rest[1..]),
            b'[' => match class_end(rest) {
                Some(end) => (GlobToken::Class(&rest[..end]), &rest[end + 1..]),
                None => (GlobToken::Byte(b'['), rest),
            },
            literal => (GlobToken::Byte(literal), rest),
        };
        tokens.push(token);
        pattern = rest;
    }
    tokens
}

/// Where the class that starts after `[` ends (the `]`), honouring `\\`.
fn class_end(class: &[u8]) -> Option<usize> {
    let mut position = 0;
    while position < class.len() {
        match class[position] {
            b'\\' => position += 2,
            b']' if position > 0 => return Some(position),
            _ => position += 1,
        }
    }
    None
}

fn class_matches(class: &[u8], byte: u8) -> bool {
    let (negated, mut class) = match class.split_first() {
        Some((b'^', rest)) => (true, rest),
        _ => (false, class),
    };
    let mut found = false;
    while let Some((&first, rest)) = class.split_first() {
        if first == b'\\' && !rest.is_empty() {
            found |= rest[0] == byte;
            class = &rest[1..];
        } else if rest.len() >= 2 && rest[0] == b'-' {
            let (low, high) = (first.min(rest[1]), first.max(rest[1]));
            found |= (low..=high).contains(&byte);
            class = &rest[2..];
        } else {
            found |= first == byte;
            class = rest;
        }
    }
    found != negated
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_redis() {
        let long = "a".repeat(200);
        let cases: &[(&str, &str, bool)] = &[
            ("*", "", true),
            ("user:*", "user:42", true),
            ("user:*", "users", false),
            ("h?llo", "hello", true),
            ("h[ae]llo", "hallo", true),
            ("h[^e]llo", "hello", false),
            ("h[a-c]llo", "hbllo", true),
            ("h\\*", "h*", true),
            ("h\\*", "hx", false),
            ("*a*b", "xxaxxb", true),
            ("[", "[", true),
            ("a*a*a*a*a*a*a*a*b", &long, false),
        ];
        for &(pattern, key, expected) in cases {
            assert_eq!(
                glob_match(pattern.as_bytes(), key.as_bytes()),
                expected,
                "{pattern} {key}"
            );
        }
    }
}
