-- test_office.lua — the pure XML-to-text walk of lua-flows/lib/office.lua.
local office = require "office"

return function(t)
  t.eq(office.kind("application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
    "docx", "docx")
  t.eq(office.kind("application/vnd.oasis.opendocument.text; charset=binary"), "odf", "odt")
  t.eq(office.kind("application/zip"), nil, "a plain zip is not an office document")
  t.eq(office.xml_text('<w:document><w:body><w:p><w:r><w:t>Invoice</w:t></w:r>' ..
    '<w:r><w:tab/><w:t xml:space="preserve">A &amp; B </w:t></w:r></w:p>' ..
    '<w:p><w:r><w:instrText>PAGE</w:instrText><w:t>x</w:t></w:r></w:p></w:body></w:document>',
    "docx"), "Invoice\tA & B \nx\n", "docx paragraphs, tabs, entities; field codes left out")
  t.eq(office.xml_text('<p:sld><a:p><a:r><a:t>Q3</a:t></a:r><a:br/><a:r><a:t>up</a:t></a:r>' ..
    '</a:p></p:sld>', "pptx"), "Q3\nup\n", "pptx")
  t.eq(office.xml_text('<office:text><text:h>T</text:h><text:p>a<text:s/>' ..
    '<text:span>b</text:span></text:p><text:p/></office:text>', "odf"), "T\na b\n\n", "odt")
  t.eq(office.xml_text('<w:tbl><w:tr><w:tc><w:p><w:r><w:t>Qty</w:t></w:r></w:p></w:tc>' ..
    '<w:tc><w:p><w:r><w:t>2</w:t></w:r></w:p></w:tc></w:tr></w:tbl>', "docx"),
    "Qty \t2 \t\n", "a table row stays on one line")
  t.eq(office.xml_text('<table:table-row><table:table-cell><text:p>a</text:p>' ..
    '</table:table-cell><table:table-cell/><table:table-cell><text:p>b</text:p>' ..
    '</table:table-cell></table:table-row>', "odf"), "a \t\tb \t\n", "ods row")
  -- entities are never expanded: only the five predefined and character references
  t.eq(office.xml_text('<!DOCTYPE x [<!ENTITY a "aaaa">]><w:p><w:t>&a;&a;&#65;</w:t></w:p>',
    "docx"), "&a;&a;A\n", "no entity expansion")
  t.eq(office.unescape("&#xD800;&#1114112;&lt;"), "&#xD800;&#1114112;<", "bad references kept")
  local strings = office.xlsx_strings('<sst><si><t>Widget</t></si>' ..
    '<si><r><t>A</t></r><r><t>B</t></r><rPh><t>yomi</t></rPh></si><si/></sst>')
  t.eq(strings, { "Widget", "AB", "" }, "shared strings, phonetic runs left out")
  t.eq(office.xlsx_sheet('<sheetData><row><c t="s"><v>0</v></c><c/><c><f>1+1</f><v>2</v></c>' ..
    '<c t="b"><v>1</v></c></row><row><c t="inlineStr"><is><t>x&lt;y</t></is></c>' ..
    '<c t="s"><v>99</v></c></row></sheetData>', strings),
    "Widget\t\t2\tTRUE\nx<y\t\n", "sheet rows and cells")
end
