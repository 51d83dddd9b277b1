-- A shared email address appears once on the email marketing list.
select email, count(*) as rows_for_email
from marts.email_marketing_list
group by email
having count(*) > 1
