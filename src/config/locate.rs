//! Finds where a key sits in the TOML text, so that every configuration error can be
//! printed as `FILE:LINE:COL` with the key's dotted path (`upstream.shop.backend[1].replica`).

use std::ops::Range;

use toml_edit::{ImDocument, Item, Value};

/// One key or array element of the document: its dotted path and where it is.
struct Entry {
    path: String,
    /// The key itself, or for an array element the element.
    key: Option<Range<usize>>,
    value: Option<Range<usize>>,
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..floor_char_boundary(text, offset)];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

fn floor_char_boundary(text: &str, mut i: usize) -> usize {
    while i > 0 && !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The span of the key at `path`, or of its closest ancestor present in the text.
pub fn span_of(text: &str, path: &str) -> Option<Range<usize>> {
    let entries = entries(text);
    let mut path = path;
    loop {
        if let Some(e) = entries.iter().find(|e| e.path == path) {
            return e.key.clone().or_else(|| e.value.clone());
        }
        let cut = path.rfind(['.', '['])?;
        path = &path[..cut];
    }
}

/// The dotted path of the innermost key whose key or value covers `offset`.
pub fn key_at(text: &str, offset: usize) -> Option<String> {
    let covers = |r: &Option<Range<usize>>| {
        r.as_ref()
            .is_some_and(|r| r.start <= offset && offset < r.end.max(r.start + 1))
    };
    entries(text)
        .into_iter()
        .filter(|e| covers(&e.key) || covers(&e.value))
        .min_by_key(|e| {
            [&e.key, &e.value]
                .into_iter()
                .flatten()
                .filter(|r| r.start <= offset && offset < r.end.max(r.start + 1))
                .map(|r| r.len())
                .min()
                .unwrap_or(usize::MAX)
        })
        .map(|e| e.path)
}

/// The key a line of TOML sets, for an error in a document too broken to
/// parse as a whole (an integer past 64 bits): the line's `key =` under the
/// last `[table]` or `[[array]]` header above it (an array's element without
/// its index). `None` for a line that sets nothing.
pub fn key_on_line(text: &str, offset: usize) -> Option<String> {
    let before = &text[..floor_char_boundary(text, offset.min(text.len()))];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    let plain = |k: &str| {
        !k.is_empty()
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
    };
    if !plain(key) {
        return None;
    }
    let table = before[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(['[', ']']).trim())
        .filter(|t| plain(t));
    Some(match table {
        Some(table) => format!("{table}.{key}"),
        None => key.to_string(),
    })
}

fn entries(text: &str) -> Vec<Entry> {
    let mut out = Vec::new();
    if let Ok(doc) = ImDocument::parse(text) {
        walk_table(doc.as_table(), "", &mut out);
    }
    out
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

fn walk_table(table: &toml_edit::Table, prefix: &str, out: &mut Vec<Entry>) {
    for (name, item) in table.iter() {
        let path = join(prefix, name);
        let key = table.key(name).and_then(|k| k.span());
        walk_item(item, path, key, out);
    }
}

fn walk_item(item: &Item, path: String, key: Option<Range<usize>>, out: &mut Vec<Entry>) {
    match item {
        Item::Table(t) => {
            out.push(Entry {
                path: path.clone(),
                key: t.span().or(key),
                value: t.span(),
            });
            walk_table(t, &path, out);
        }
        Item::ArrayOfTables(a) => {
            out.push(Entry {
                path: path.clone(),
                key,
                value: a.span(),
            });
            for (i, t) in a.iter().enumerate() {
                let p = format!("{path}[{i}]");
                out.push(Entry {
                    path: p.clone(),
                    key: t.span(),
                    value: t.span(),
                });
                walk_table(t, &p, out);
            }
        }
        Item::Value(v) => walk_value(v, path, key, out),
        Item::None => {}
    }
}

fn walk_value(value: &Value, path: String, key: Option<Range<usize>>, out: &mut Vec<Entry>) {
    out.push(Entry {
        path: path.clone(),
        key,
        value: value.span(),
    });
    match value {
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                walk_value(v, format!("{path}[{i}]"), v.span(), out);
            }
        }
        Value::InlineTable(t) => {
            for (name, v) in t.iter() {
                let k = t.key(name).and_then(|k| k.span());
                walk_value(v, join(&path, name), k, out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "[listen]\nhttp = [\"a\", \"b\"]\n\n[[upstream.shop.backend]]\nname = \"app1\"\nreplica = \"x\"\n";

    #[test]
    fn finds_nested_keys() {
        let span = span_of(TEXT, "upstream.shop.backend[0].replica").unwrap();
        assert_eq!(line_col(TEXT, span.start), (6, 1));
        let span = span_of(TEXT, "listen.http[1]").unwrap();
        assert_eq!(line_col(TEXT, span.start), (2, 14));
    }

    #[test]
    fn falls_back_to_the_closest_ancestor() {
        let span = span_of(TEXT, "upstream.shop.backend[0].weight").unwrap();
        assert_eq!(line_col(TEXT, span.start).0, 4);
    }

    #[test]
    fn key_on_line_names_the_key_of_a_line() {
        let text = "[limits]\nmax_connections = 99999999999999999999\n\n\
                    [[upstream.shop.backend]]\nweight = 1\n";
        let at = |needle: &str| text.find(needle).unwrap();
        assert_eq!(
            key_on_line(text, at("9999")).as_deref(),
            Some("limits.max_connections")
        );
        assert_eq!(
            key_on_line(text, at("weight")).as_deref(),
            Some("upstream.shop.backend.weight")
        );
        assert_eq!(key_on_line(text, at("[[upstream")), None);
    }

    #[test]
    fn key_at_names_the_innermost_key() {
        let offset = TEXT.find("\"x\"").unwrap();
        assert_eq!(
            key_at(TEXT, offset).as_deref(),
            Some("upstream.shop.backend[0].replica")
        );
    }
}
