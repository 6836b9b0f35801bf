//! One pass over a type's listing: `batchget_material` in windows of 20 at offsets 0,
//! 20, 40… up to total_count, and what the pass saw, to tell whether the list held
//! still while it was paged. Used by the sync and by `--dry-run`.

use std::collections::{BTreeSet, HashSet};

use crate::wechat::{Client, MaterialKind, MaterialPage, WechatError};

/// The largest window the API allows.
const PAGE: u32 = 20;

/// What one pass over a type's listing saw.
#[derive(Debug, Default)]
pub(super) struct View {
    /// Distinct media_ids listed.
    pub seen: HashSet<String>,
    /// Every total_count the pages announced.
    pub totals: BTreeSet<u64>,
    /// Items that came more than once.
    pub duplicates: usize,
    /// Items without a media_id.
    pub malformed: usize,
    /// A page came back empty before total_count was reached.
    pub short: bool,
}

impl View {
    /// A pass is consistent when total_count never moved, no item came twice, none was
    /// missing, and the distinct items add up to total_count.
    pub fn consistent(&self) -> bool {
        let total = self.totals.iter().next().copied().unwrap_or(0);
        self.totals.len() <= 1
            && self.duplicates == 0
            && !self.short
            && (self.seen.len() + self.malformed) as u64 == total
    }

    fn largest_total(&self) -> u64 {
        self.totals.iter().max().copied().unwrap_or(0)
    }
}

/// A pass in progress: hands out pages as they arrive and keeps the view.
pub(super) struct Pass {
    kind: MaterialKind,
    offset: u64,
    done: bool,
    view: View,
}

impl Pass {
    /// A pass over `kind` from offset 0.
    pub fn new(kind: MaterialKind) -> Self {
        Self {
            kind,
            offset: 0,
            done: false,
            view: View::default(),
        }
    }

    /// The next page, or `None` once the pass reached total_count or an empty page.
    /// Offsets advance by what was received, so a page with more items than asked
    /// (news, seen) or fewer does not skip anything.
    pub async fn next(&mut self, client: &Client) -> Result<Option<MaterialPage>, WechatError> {
        if self.done {
            return Ok(None);
        }
        let page = client.list(self.kind, self.offset, PAGE).await?;
        let view = &mut self.view;
        view.totals.insert(page.total_count);
        view.malformed += page.malformed;
        for item in &page.items {
            if !view.seen.insert(item.media_id.clone()) {
                view.duplicates += 1;
            }
        }
        let received = (page.items.len() + page.malformed) as u64;
        self.offset += received;
        if received == 0 {
            view.short = self.offset < view.largest_total();
            self.done = true;
        } else if self.offset >= view.largest_total() {
            self.done = true;
        }
        Ok(Some(page))
    }

    /// What the pass saw.
    pub fn into_view(self) -> View {
        self.view
    }
}
