// Sorting and filtering the table of runs: a few lines of plain JavaScript, nothing fetched,
// so the site works from file://. Without JavaScript the table is simply shown in full, newest first.
"use strict";
(function () {
  const table = document.querySelector("table[data-sortable]");
  if (!table) return;
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  const filter = document.getElementById("experiment-filter");
  const count = document.getElementById("shown-count");

  // A cell's value for sorting: its data-sort attribute when it has one (numbers, dates), else its text.
  function cellValue(row, column, numeric) {
    const cell = row.cells[column];
    const text = cell.dataset.sort !== undefined ? cell.dataset.sort : cell.textContent.trim();
    if (!numeric) return text.toLowerCase();
    return text === "" ? NaN : Number(text);
  }

  function sortBy(header, column, numeric) {
    const ascending = header.getAttribute("aria-sort") !== "ascending";
    table.querySelectorAll("th[aria-sort]").forEach((th) => th.removeAttribute("aria-sort"));
    header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    const direction = ascending ? 1 : -1;
    rows.sort((a, b) => {
      const x = cellValue(a, column, numeric), y = cellValue(b, column, numeric);
      if (numeric && (isNaN(x) || isNaN(y))) return isNaN(x) - isNaN(y);  // no value: always last
      return (x < y ? -1 : x > y ? 1 : 0) * direction;
    });
    rows.forEach((row) => body.appendChild(row));
  }

  function applyFilter() {
    const wanted = filter.value;
    let shown = 0;
    rows.forEach((row) => {
      row.hidden = wanted !== "" && row.dataset.experiment !== wanted;
      shown += row.hidden ? 0 : 1;
    });
    count.textContent = shown + " of " + rows.length + " runs shown";
  }

  Array.from(table.tHead.rows[0].cells).forEach((header, column) => {
    const button = header.querySelector("button");
    if (button) button.addEventListener("click", () => sortBy(header, column, button.dataset.type === "number"));
  });
  filter.addEventListener("change", applyFilter);
  filter.closest(".controls").hidden = false;
  applyFilter();
})();
