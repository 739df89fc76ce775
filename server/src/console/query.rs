//! The query string of a console request (`?status=fail&data=%22accname%22`), decoded
//! by hand: the few parameters the routes read need no URL crate.

use std::collections::HashMap;

/// `a=1&b=x%20y` → map (the last value of a repeated key wins); `+` is a space.
pub(super) fn parse_query(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key), percent_decode(value))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                bytes.get(i + 1).and_then(|b| hex(*b)),
                bytes.get(i + 2).and_then(|b| hex(*b)),
            ) {
                (Some(high), Some(low)) => {
                    out.push((high * 16 + low) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_decode_percent_escapes_and_plus() {
        let query = parse_query("data=%22accname%22%3A+%221%22&event=accounts.create&x&bad=%zz%4");
        assert_eq!(query["data"], "\"accname\": \"1\"");
        assert_eq!(query["event"], "accounts.create");
        assert_eq!(query["x"], "");
        assert_eq!(query["bad"], "%zz%4");
    }
}
