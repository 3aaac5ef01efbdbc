//! Every CSV tally writes (the aggregate's rows, the totals over time; over HTTP and
//! from the CLI) goes through [`CsvOut`], so no cell can be taken for a formula by a
//! spreadsheet (CSV injection). Text that comes from outside — owner ids from Stripe
//! metadata, account ids, error codes, anything — is [`Cell::Text`]: one that begins
//! with `=`, `+`, `-`, `@`, a tab or a carriage return gets a single quote in front,
//! as OWASP recommends. Amounts and counts are [`Cell::Number`]: written as plain
//! integers, so a negative balance stays `-40161` and still sums.

use std::borrow::Cow;

/// One cell of a row.
#[derive(Debug, Clone, Copy)]
pub enum Cell<'a> {
    /// Any text; neutralised if a spreadsheet would read it as a formula.
    Text(&'a str),
    /// An integer (minor units, a count), written as is.
    Number(i64),
}

/// The characters that make a spreadsheet read a cell as a formula (or that some use
/// to smuggle one past a check on the first), per OWASP's CSV injection guidance.
const FORMULA_START: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];

/// `text` as a spreadsheet shows it as text: with a leading single quote when it
/// begins like a formula, unchanged otherwise.
pub fn neutralise(text: &str) -> Cow<'_, str> {
    if text.starts_with(FORMULA_START) {
        Cow::Owned(format!("'{text}"))
    } else {
        Cow::Borrowed(text)
    }
}

/// A CSV document being written in memory, row by row.
pub struct CsvOut {
    out: csv::Writer<Vec<u8>>,
}

impl Default for CsvOut {
    fn default() -> Self {
        CsvOut::new()
    }
}

impl CsvOut {
    pub fn new() -> CsvOut {
        CsvOut {
            out: csv::Writer::from_writer(Vec::new()),
        }
    }

    /// The header row: column names tally chose, written as they are.
    pub fn header(&mut self, names: &[&str]) -> Result<(), csv::Error> {
        self.out.write_record(names)
    }

    pub fn row(&mut self, cells: &[Cell<'_>]) -> Result<(), csv::Error> {
        let mut record = csv::StringRecord::with_capacity(64, cells.len());
        for cell in cells {
            match *cell {
                Cell::Text(text) => record.push_field(&neutralise(text)),
                Cell::Number(number) => record.push_field(&number.to_string()),
            }
        }
        self.out.write_record(&record)
    }

    /// The document's bytes.
    pub fn finish(self) -> Result<Vec<u8>, csv::Error> {
        self.out
            .into_inner()
            .map_err(|error| error.into_error().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(cells: &[Cell<'_>]) -> String {
        let mut out = CsvOut::new();
        out.row(cells).expect("written");
        String::from_utf8(out.finish().expect("finished")).expect("utf-8")
    }

    #[test]
    fn text_that_starts_like_a_formula_is_quoted_and_numbers_are_not() {
        for (text, expected) in [
            ("=HYPERLINK(\"http://x\")", "'=HYPERLINK(\"http://x\")"),
            ("+1", "'+1"),
            ("-1", "'-1"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("\tx", "'\tx"),
            ("\rx", "'\rx"),
            ("acct_1", "acct_1"),
            ("", ""),
            ("a=b", "a=b"),
        ] {
            assert_eq!(neutralise(text), expected, "{text:?}");
        }
        assert_eq!(
            written(&[Cell::Text("=1+2"), Cell::Number(-40161), Cell::Text("ok")]),
            "'=1+2,-40161,ok\n"
        );
        // A cell the csv writer quotes (a comma, a quote) is neutralised inside its quotes.
        assert_eq!(written(&[Cell::Text("=a,b")]), "\"'=a,b\"\n");
    }
}
