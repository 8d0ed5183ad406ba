//! A block of generated lines between two marker lines of a hand-written file (the template's YAML, a docs
//! page): where it is, the file with it rewritten, and the first line where it differs from what it should be.
//! The template's blocks (`infra`) and the docs' tables (`generated_docs`) both keep theirs this way.

/// The byte range of the generated lines: from the line after `begin` up to `end`. `Err` is the missing marker.
pub fn bounds(text: &str, begin: &str, end: &str) -> Result<(usize, usize), String> {
    let start = text.find(begin).ok_or_else(|| begin.trim().to_owned())?;
    let body = text[start..]
        .find('\n')
        .map_or(text.len(), |i| start + i + 1);
    let stop = text[body..]
        .find(end)
        .map(|i| body + i)
        .ok_or_else(|| end.trim().to_owned())?;
    Ok((body, stop))
}

/// `text` with the lines between the markers replaced by `generated`. `Err` is the missing marker.
pub fn rewrite(text: &str, begin: &str, end: &str, generated: &str) -> Result<String, String> {
    let (body, stop) = bounds(text, begin, end)?;
    Ok(format!("{}{generated}{}", &text[..body], &text[stop..]))
}

/// Where `found` first differs from `expected`: the line number (from 1) and both lines, `(end of block)` past
/// either's end. `None` when they are the same text.
pub fn first_difference(found: &str, expected: &str) -> Option<(usize, String, String)> {
    if found == expected {
        return None;
    }
    let (mut f, mut e) = (found.lines(), expected.lines());
    for line in 1.. {
        match (f.next(), e.next()) {
            (Some(a), Some(b)) if a == b => continue,
            (a, b) => {
                let shown = |l: Option<&str>| l.unwrap_or("(end of block)").to_owned();
                return Some((line, shown(a), shown(b)));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_is_found_rewritten_and_compared_between_its_markers() {
        let text = "head\n# BEGIN x\nold 1\nold 2\n# END x\ntail\n";
        assert_eq!(bounds(text, "# BEGIN x", "# END x"), Ok((15, 27)));
        assert_eq!(
            rewrite(text, "# BEGIN x", "# END x", "new\n").unwrap(),
            "head\n# BEGIN x\nnew\n# END x\ntail\n"
        );
        assert_eq!(
            bounds(text, "# BEGIN y", "# END y"),
            Err("# BEGIN y".into())
        );
        assert_eq!(bounds(text, "# BEGIN x", "# END y"), Err("# END y".into()));
        assert_eq!(first_difference("a\nb\n", "a\nb\n"), None);
        assert_eq!(
            first_difference("a\nb\n", "a\nc\nd\n"),
            Some((2, "b".into(), "c".into()))
        );
        assert_eq!(
            first_difference("a\n", "a\nd\n"),
            Some((2, "(end of block)".into(), "d".into()))
        );
        // Texts that differ only past their last line still differ.
        assert_eq!(
            first_difference("a", "a\n"),
            Some((2, "(end of block)".into(), "(end of block)".into()))
        );
    }
}
